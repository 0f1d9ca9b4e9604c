// Shared by the test targets: closeness checks that print the worst elements, and running the built `hgdpo`
// binary or the launch scripts as a user would.
import Foundation
import XCTest

/// The repository root (this file is Tests/TestSupport/TestSupport.swift).
public let repoRoot: String = {
    var url = URL(fileURLWithPath: #filePath)
    for _ in 0..<3 { url.deleteLastPathComponent() }
    return url.path
}()

/// The `hgdpo` binary built beside the test bundle (test targets depend on the executable, so it is built).
public var hgdpoBinary: String {
    let dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    for candidate in [dir.appendingPathComponent("hgdpo").path,
                      dir.deletingLastPathComponent().appendingPathComponent("hgdpo").path]
    where FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
    return (repoRoot as NSString).appendingPathComponent(".build/debug/hgdpo")
}

public struct ProcessResult {
    public let status: Int32
    public let stdout: String
    public let stderr: String
}

/// Runs a program to completion, capturing its output; `timeout` (seconds) kills it if it hangs.
public func runProcess(_ executable: String, _ arguments: [String], environment: [String: String] = [:],
                timeout: TimeInterval = 300) throws -> ProcessResult {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: executable)
    p.arguments = arguments
    var env = ProcessInfo.processInfo.environment
    for (k, v) in environment { env[k] = v }
    p.environment = env
    let out = Pipe(), err = Pipe()
    p.standardOutput = out
    p.standardError = err
    p.standardInput = FileHandle.nullDevice
    try p.run()
    // Drain both pipes while the process runs, so a chatty child cannot block on a full pipe.
    final class Drained: @unchecked Sendable { var data = Data() }   // each written by one reader, read after group.wait()
    let outData = Drained(), errData = Drained()
    let group = DispatchGroup()
    group.enter(); DispatchQueue.global().async { outData.data = out.fileHandleForReading.readDataToEndOfFile(); group.leave() }
    group.enter(); DispatchQueue.global().async { errData.data = err.fileHandleForReading.readDataToEndOfFile(); group.leave() }
    let deadline = Date().addingTimeInterval(timeout)
    while p.isRunning && Date() < deadline { usleep(20_000) }
    if p.isRunning { p.terminate(); usleep(500_000); if p.isRunning { kill(p.processIdentifier, SIGKILL) } }
    p.waitUntilExit()
    group.wait()
    return ProcessResult(status: p.terminationStatus, stdout: String(decoding: outData.data, as: UTF8.self),
                         stderr: String(decoding: errData.data, as: UTF8.self))
}

/// Runs the built `hgdpo` with arguments.
public func hgdpo(_ arguments: [String], environment: [String: String] = [:], timeout: TimeInterval = 300) throws -> ProcessResult {
    try runProcess(hgdpoBinary, arguments, environment: environment, timeout: timeout)
}

/// A fresh temporary directory, removed when the test ends.
public func temporaryDirectory(_ test: XCTestCase) throws -> String {
    let dir = (NSTemporaryDirectory() as NSString).appendingPathComponent("hgdpo-test-\(UUID().uuidString)")
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    test.addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
    return dir
}

/// |actual − expected| ≤ atol + rtol·|expected| element-wise; on failure prints the worst elements and the max error.
public func assertClose(_ actual: [Float], _ expected: [Float], rtol: Float = 1e-5, atol: Float = 1e-6, label: String = "",
                        file: StaticString = #filePath, line: UInt = #line) {
    assertClose(actual.map(Double.init), expected.map(Double.init), rtol: Double(rtol), atol: Double(atol), label: label,
                file: file, line: line)
}

public func assertClose(_ actual: [Double], _ expected: [Double], rtol: Double = 1e-5, atol: Double = 1e-6, label: String = "",
                        file: StaticString = #filePath, line: UInt = #line) {
    guard actual.count == expected.count else {
        XCTFail("\(label): \(actual.count) elements, expected \(expected.count)", file: file, line: line)
        return
    }
    var bad: [(Int, Double)] = []
    var maxErr = 0.0
    for i in 0..<actual.count {
        let err = abs(actual[i] - expected[i])
        if !(err <= atol + rtol * abs(expected[i])) { bad.append((i, err.isNaN ? .infinity : err)) }
        if err > maxErr || err.isNaN { maxErr = err.isNaN ? .infinity : err }
    }
    guard !bad.isEmpty else { return }
    let worst = bad.sorted { $0.1 > $1.1 }.prefix(5)
        .map { "[\($0.0)] \(actual[$0.0]) vs \(expected[$0.0])" }.joined(separator: ", ")
    XCTFail("\(label): \(bad.count)/\(actual.count) elements off (rtol \(rtol), atol \(atol)); max abs error \(maxErr); worst: \(worst)",
            file: file, line: line)
}
