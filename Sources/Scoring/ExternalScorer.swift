// A scorer that is another program: any command speaking hgdpo's JSON-lines protocol on stdin/stdout (one JSON
// object per line each way), so ImageReward, HPS v3 or anything with a Python API plugs in without hgdpo knowing it.
// The protocol (docs/dataset.md; example: scripts/example_scorer.py):
//   hgdpo → {"hgdpo": "hello", "protocol": 1}
//   cmd   → {"name": "…", "version": "…"}                  version is recorded with the scores
//   hgdpo → {"id": 1, "prompt": "…", "images": ["/tmp/…/0.png", …]}   8-bit RGB PNGs, valid until the answer
//   cmd   → {"id": 1, "scores": [0.31, …]}               one finite number per image, higher is better
//        or {"id": 1, "error": "message"}                 ends the run with the message
//   hgdpo closes stdin when done; the command should exit.
// The command runs under /bin/sh -c. Its stderr passes through to hgdpo's, prefixed with the scorer name. Each answer
// must come within `timeout` seconds (spec `NAME=external:COMMAND,timeout=S`, default 600; the hello within
// `helloTimeout`); a late answer, an exit, or a line that is not the expected JSON ends the run with an error naming
// the scorer, the command and the last lines of its stderr.
import Foundation
import IO
#if canImport(Glibc)
import Glibc
#endif

public struct ExternalScorerError: Error, UserInputError, CustomStringConvertible {
    public let message: String
    public var description: String { message }
}

public final class ExternalScorer: Scorer {
    public private(set) var descriptor: ScorerDescriptor
    public let command: String
    public let timeout: Double
    private let process = Process()
    private let stdinFD: Int32, stdoutFD: Int32
    private var buffer = [UInt8]()
    private var nextID = 1
    private let imageFolder: String
    private let stderrTail = StderrTail()

    /// A spec's argument: `COMMAND[,timeout=SECONDS]`.
    public convenience init(name: String, argument: String) throws {
        let arg = try ScorerArgument(argument, spec: "\(name)=external:\(argument)", allowed: ["timeout"], strict: false)
        var timeout = 600.0
        if let t = arg.options["timeout"] {
            guard let v = Double(t), v > 0 else {
                throw ExternalScorerError(message: "invalid scorer spec '\(name)=external:\(argument)': timeout=\(t) must be a positive number of seconds")
            }
            timeout = v
        }
        try self.init(name: name, command: arg.path, timeout: timeout)
    }

    /// Starts `command` and reads its hello. `timeout`: seconds per answer.
    public init(name: String, command: String, timeout: Double = 600, helloTimeout: Double = 60) throws {
        self.command = command
        self.timeout = timeout
        signal(SIGPIPE, SIG_IGN)   // a dead command must give EPIPE on write, not kill hgdpo
        let inPipe = Pipe(), outPipe = Pipe(), errPipe = Pipe()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", command]
        process.standardInput = inPipe; process.standardOutput = outPipe; process.standardError = errPipe
        do { try process.run() } catch {
            throw ExternalScorerError(message: "scorer '\(name)': cannot start `\(command)`: \(error)")
        }
        stdinFD = inPipe.fileHandleForWriting.fileDescriptor
        stdoutFD = outPipe.fileHandleForReading.fileDescriptor
        stderrTail.start(errPipe.fileHandleForReading, prefix: "[\(name)] ")
        imageFolder = (NSTemporaryDirectory() as NSString).appendingPathComponent("hgdpo-external-\(getpid())-\(name)")
        try FileManager.default.createDirectory(atPath: imageFolder, withIntermediateDirectories: true)
        descriptor = ScorerDescriptor(name: name, kind: "external", argument: command, version: "", settings: [:])
        descriptor.settings["timeout_s"] = String(timeout)
        try send(JSONValue.object([("hgdpo", .string("hello")), ("protocol", .int(1))]))
        let hello = try receive(within: helloTimeout, what: "its hello answer")
        descriptor.version = (hello["version"] as? String) ?? "unknown"
        if let n = hello["name"] as? String { descriptor.settings["reported_name"] = n }
        descriptor.settings["protocol"] = "1"
    }

    deinit {
        close(stdinFD)
        let deadline = Date().addingTimeInterval(5)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        if process.isRunning { process.terminate() }
        try? FileManager.default.removeItem(atPath: imageFolder)
    }

    public func score(images: [ByteImage], prompt: String) throws -> [Double] {
        var paths: [String] = []
        for (i, im) in images.enumerated() {
            let p = (imageFolder as NSString).appendingPathComponent("\(i).png")
            try PNG.writeBytes(im, to: p)
            paths.append(p)
        }
        let id = nextID
        nextID += 1
        try send(JSONValue.object([("id", .int(id)), ("prompt", .string(prompt)), ("images", .array(paths.map { .string($0) }))]))
        let answer = try receive(within: timeout, what: "the scores of request \(id)")
        if let message = answer["error"] { throw fail("answered request \(id) with an error: \(message)") }
        guard (answer["id"] as? NSNumber)?.intValue == id else {
            throw fail("answered request \(id) with id \(answer["id"].map { "\($0)" } ?? "none"); expected {\"id\": \(id), \"scores\": […]}")
        }
        guard let list = answer["scores"] as? [Any] else { throw fail("answer to request \(id) has no \"scores\" list") }
        let scores = try list.map { v -> Double in
            guard let n = v as? NSNumber, String(cString: n.objCType) != "c", n.doubleValue.isFinite else {
                throw fail("answer to request \(id): score \(v) is not a finite number")
            }
            return n.doubleValue
        }
        guard scores.count == images.count else {
            throw fail("answered request \(id) with \(scores.count) scores for \(images.count) images")
        }
        return scores
    }

    // MARK: - Lines

    private func fail(_ what: String) -> ExternalScorerError {
        let tail = stderrTail.text
        return ExternalScorerError(message: "external scorer '\(descriptor.name)' (`\(command)`) \(what)"
                                   + (tail.isEmpty ? "" : "; its last stderr lines:\n\(tail)"))
    }

    private func send(_ value: JSONValue) throws {
        let bytes = Array((value.serialized() + "\n").utf8)
        var off = 0
        while off < bytes.count {
            let n = bytes[off...].withUnsafeBytes { write(stdinFD, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw fail(exitDescription(orElse: "stopped reading its input (\(String(cString: strerror(errno))))") + " before hgdpo could send it a request")
            }
            off += n
        }
    }

    private func exitDescription(orElse other: String) -> String {
        usleep(100_000)
        if !process.isRunning { return "exited with status \(process.terminationStatus)" }
        return other
    }

    /// The next line of the command's stdout as a JSON object, within `seconds`.
    private func receive(within seconds: Double, what: String) throws -> [String: Any] {
        let deadline = Date().addingTimeInterval(seconds)
        while true {
            if let nl = buffer.firstIndex(of: UInt8(ascii: "\n")) {
                let line = Array(buffer[..<nl])
                buffer.removeSubrange(...nl)
                if line.allSatisfy({ $0 == 0x20 || $0 == 0x0D || $0 == 0x09 }) { continue }
                guard let o = try? JSONSerialization.jsonObject(with: Foundation.Data(line)) as? [String: Any] else {
                    let text = String(decoding: line.prefix(200), as: UTF8.self)
                    throw fail("answered with a line that is not a JSON object while hgdpo waited for \(what): \"\(text)\"")
                }
                return o
            }
            let left = deadline.timeIntervalSinceNow
            guard left > 0 else {
                process.terminate()
                throw fail("gave no answer within \(Int(seconds)) s while hgdpo waited for \(what) (stopped; "
                           + "add ,timeout=SECONDS to the scorer spec for a longer limit)")
            }
            var pfd = pollfd(fd: stdoutFD, events: Int16(POLLIN), revents: 0)
            let r = poll(&pfd, 1, Int32(min(left, 1) * 1000))
            if r < 0 && errno != EINTR { throw fail("could not be read: \(String(cString: strerror(errno)))") }
            if r <= 0 { continue }
            var chunk = [UInt8](repeating: 0, count: 65536)
            let n = chunk.withUnsafeMutableBytes { read(stdoutFD, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 {
                process.waitUntilExit()
                throw fail("exited (status \(process.terminationStatus)) while hgdpo waited for \(what)")
            }
            buffer += chunk[..<n]
        }
    }
}

/// Forwards a child's stderr (prefixed) and keeps its last lines for error messages.
final class StderrTail: @unchecked Sendable {
    private let lock = NSLock()
    private var lines: [String] = []

    var text: String { lock.lock(); defer { lock.unlock() }; return lines.map { "  " + $0 }.joined(separator: "\n") }

    func start(_ handle: FileHandle, prefix: String) {
        let thread = Thread { [self] in
            var pending = ""
            while true {
                let data = handle.availableData
                if data.isEmpty { break }
                pending += String(decoding: data, as: UTF8.self)
                while let nl = pending.firstIndex(of: "\n") {
                    let line = String(pending[..<nl])
                    pending = String(pending[pending.index(after: nl)...])
                    fputs(prefix + line + "\n", stderr)
                    lock.lock(); lines.append(line); if lines.count > 10 { lines.removeFirst() }; lock.unlock()
                }
            }
            if !pending.isEmpty { lock.lock(); lines.append(pending); lock.unlock() }
        }
        thread.start()
    }
}
