// Checkpoints: RUN_DIR/step-NNNNNN/ with the LoRA (diffusers format, loadable as is), the optimizer state and the
// trainer state, written into a temporary folder, fsynced, renamed into place, then `latest` is pointed at it
// (atomically); only the last K are kept. A crash at any moment leaves every complete checkpoint intact.
// trainer_state.json, written last, also records the size and CRC-32 of the other two files, so `verify` can tell a
// complete checkpoint from one damaged afterwards (a truncated copy, a bad disk block); `--resume auto` verifies the
// newest checkpoint and falls back to the newest intact one, saying why; `--resume DIR` never falls back.
import Foundation
import IO
import NN
import Tensors
import UNet
#if canImport(Glibc)
import Glibc
#endif

public struct TrainerState: Codable, Sendable, Equatable {
    public var step: Int
    public var epoch: Int
    public var samplesSeen: Int
    public var configHash: String
    public var worldSize: Int
    public var loraRank: Int
    public var loraAlpha: Double
    public var seed: UInt64
    public var consecutiveSkips: Int
    public var skippedSteps: Int
    /// `--mixed-precision` of the run (nil in checkpoints written before it was recorded: those were fp32).
    public var mixedPrecision: String?

    enum CodingKeys: String, CodingKey {
        case step, epoch, samplesSeen = "samples_seen", configHash = "config_hash", worldSize = "world_size"
        case loraRank = "lora_rank", loraAlpha = "lora_alpha", seed, consecutiveSkips = "consecutive_skips"
        case skippedSteps = "skipped_steps", mixedPrecision = "mixed_precision"
    }
}

public struct CheckpointError: Error, UserInputError, CustomStringConvertible {
    public let path: String
    public let message: String
    public var description: String { "\(path): \(message)" }
}

public enum Checkpoint {
    public static let loraFile = "pytorch_lora_weights.safetensors"
    public static let optimizerFile = "optimizer.safetensors"
    public static let stateFile = "trainer_state.json"

    public static func name(step: Int) -> String {
        let s = String(step)
        return "step-" + String(repeating: "0", count: max(0, 6 - s.count)) + s
    }

    /// Writes a complete checkpoint and moves `latest` to it; returns its folder.
    @discardableResult
    public static func save(runDir: String, state: TrainerState, lora: LoRAAdapters, optimizer: Optimizer, keep: Int) throws -> String {
        let fm = FileManager.default
        let final = (runDir as NSString).appendingPathComponent(name(step: state.step))
        let tmp = (runDir as NSString).appendingPathComponent(".tmp-\(name(step: state.step))-\(getpid())")
        // Half-written folders of jobs killed while saving (this job holds the run folder's lock: none is being written).
        for entry in (try? fm.contentsOfDirectory(atPath: runDir)) ?? [] where entry.hasPrefix(".tmp-step-") {
            try? fm.removeItem(atPath: (runDir as NSString).appendingPathComponent(entry))
        }
        try fm.createDirectory(atPath: tmp, withIntermediateDirectories: true)
        do {
            try LoRAFile.write(lora, to: (tmp as NSString).appendingPathComponent(loraFile),
                               extraMetadata: ["hgdpo_step": String(state.step)])
            let (tensors, meta) = optimizer.stateEntries()
            try SafeTensors.write(tensors, metadata: meta, to: (tmp as NSString).appendingPathComponent(optimizerFile))
            faultDelay()
            let files = try [loraFile, optimizerFile].map { try FileDigest.of((tmp as NSString).appendingPathComponent($0), name: $0) }
            try writeFileSynced((tmp as NSString).appendingPathComponent(stateFile),
                                JSONEncoderSorted.encode(StoredState(state: state, files: files)))
            faultDelay()
            fsyncPath(tmp)
            if fm.fileExists(atPath: final) { try discard(final) }   // re-saving the same step
            guard rename(tmp, final) == 0 else { throw CheckpointError(path: final, message: "rename failed: \(String(cString: strerror(errno)))") }
            fsyncPath(runDir)
        } catch {
            try? fm.removeItem(atPath: tmp)
            throw error
        }
        // `latest` names the folder; written to a temp file and renamed so readers see old or new, never half.
        let latest = (runDir as NSString).appendingPathComponent("latest")
        try writeFileSynced(latest + ".tmp", Array((name(step: state.step) + "\n").utf8))
        guard rename(latest + ".tmp", latest) == 0 else { throw CheckpointError(path: latest, message: "rename failed") }
        fsyncPath(runDir)
        try prune(runDir: runDir, keep: keep, step: state.step)
        return final
    }

    /// Step folders, oldest first.
    public static func list(runDir: String) -> [(step: Int, path: String)] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: runDir)) ?? []
        return entries.compactMap { e -> (Int, String)? in
            guard e.hasPrefix("step-"), let s = Int(e.dropFirst(5)) else { return nil }
            return (s, (runDir as NSString).appendingPathComponent(e))
        }.sorted { $0.0 < $1.0 }
    }

    /// Keeps the newest `keep` checkpoints up to `step`; folders of later steps are from before a resume that went
    /// back (a fallback past a damaged checkpoint, or --resume DIR): this run has replaced them, so they go too.
    static func prune(runDir: String, keep: Int, step: Int) throws {
        guard keep > 0 else { return }
        let all = list(runDir: runDir)
        let stale = all.filter { $0.step > step }, current = all.filter { $0.step <= step }
        for (_, path) in stale + current.dropLast(keep) { try discard(path) }
    }

    /// Removes a checkpoint folder so that a kill at any moment leaves it whole or gone: first renamed out of the
    /// step-NNNNNN names (atomic), then deleted; a leftover is removed by the next save.
    static func discard(_ path: String) throws {
        let aside = ((path as NSString).deletingLastPathComponent as NSString)
            .appendingPathComponent(".tmp-step-discarded-\((path as NSString).lastPathComponent)-\(getpid())")
        guard rename(path, aside) == 0 else {
            throw CheckpointError(path: path, message: "cannot remove (rename failed: \(String(cString: strerror(errno))))")
        }
        try FileManager.default.removeItem(atPath: aside)
    }

    /// `--resume auto`: the newest intact checkpoint of RUN_DIR (nil when the run is new); a damaged newer one is
    /// reported through `log` with what is wrong, and skipped. `--resume DIR`: that folder, verified, with no fallback.
    public static func resolve(_ resume: String, runDir: String, log: (String) -> Void = { _ in }) throws -> String? {
        guard resume == "auto" else {
            try verify(resume)
            return resume
        }
        let candidates = list(runDir: runDir).reversed()
        let latest = (runDir as NSString).appendingPathComponent("latest")
        guard !candidates.isEmpty else {
            if let text = try? String(contentsOfFile: latest, encoding: .utf8) {
                // Progress was recorded but no checkpoint is left: starting from scratch would silently lose it.
                throw CheckpointError(path: latest, message: "names \(text.trimmingCharacters(in: .whitespacesAndNewlines)), "
                                      + "but \(runDir) holds no checkpoint folder; start a new run folder or remove \(latest)")
            }
            return nil
        }
        var damaged: [String] = []
        for (_, dir) in candidates {
            do {
                try verify(dir)
                if !damaged.isEmpty { log("resuming from \(dir), the newest intact checkpoint, instead") }
                return dir
            } catch {
                damaged.append("\(error)")
                log("checkpoint \(dir) is damaged: \(error)")
            }
        }
        throw CheckpointError(path: runDir, message: "no intact checkpoint to resume from: " + damaged.joined(separator: "; "))
    }

    /// Checks that a checkpoint folder is complete and consistent: trainer_state.json decodes; the LoRA and optimizer
    /// files have the size and CRC-32 it records (checkpoints from before the digests: they parse in full); the LoRA
    /// reads and was written at the state's step with its rank; the optimizer state is a known one at the same step.
    /// Throws a `CheckpointError` naming the file and what is wrong.
    public static func verify(_ dir: String) throws {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: dir, isDirectory: &isDir), isDir.boolValue else {
            throw CheckpointError(path: dir, message: "is not a checkpoint folder (no such folder)")
        }
        let statePath = (dir as NSString).appendingPathComponent(stateFile)
        guard FileManager.default.fileExists(atPath: statePath) else {
            throw CheckpointError(path: dir, message: "is not a checkpoint folder (no \(stateFile))")
        }
        let state = try loadState(dir)
        let stored = (try? JSONDecoder().decode(StoredDigests.self, from: Data(contentsOf: URL(fileURLWithPath: statePath))))?.files ?? []
        let folderName = (dir as NSString).lastPathComponent
        if folderName.hasPrefix("step-"), folderName != name(step: state.step) {
            throw CheckpointError(path: statePath, message: "holds step \(state.step), but the folder is \(folderName)")
        }
        for expected in stored {
            let path = (dir as NSString).appendingPathComponent(expected.name)
            guard FileManager.default.fileExists(atPath: path) else { throw CheckpointError(path: path, message: "missing") }
            let actual = try FileDigest.of(path, name: expected.name)
            guard actual.bytes == expected.bytes else {
                throw CheckpointError(path: path, message: "has \(actual.bytes) bytes, \(stateFile) records \(expected.bytes) (truncated or replaced)")
            }
            guard actual.crc32 == expected.crc32 else {
                throw CheckpointError(path: path, message: "CRC-32 \(actual.crc32) differs from the \(expected.crc32) recorded in \(stateFile) (damaged)")
            }
        }
        let loraPath = (dir as NSString).appendingPathComponent(loraFile)
        let lora = try SafeTensorsFile(path: loraPath)
        if let step = lora.metadata["hgdpo_step"], step != String(state.step) {
            throw CheckpointError(path: loraPath, message: "was written at step \(step), \(stateFile) says \(state.step)")
        }
        let weights = try LoRAFile.read(loraPath)
        guard weights.rank == state.loraRank else {
            throw CheckpointError(path: loraPath, message: "has rank \(weights.rank), \(stateFile) says \(state.loraRank)")
        }
        let optimizerPath = (dir as NSString).appendingPathComponent(optimizerFile)
        let optimizer = try SafeTensorsFile(path: optimizerPath)
        for name in optimizer.tensorNames { _ = try optimizer.rawBytes(name) }
        guard let kind = optimizer.metadata["optimizer"], let updates = optimizer.metadata["step"].flatMap(Int.init) else {
            throw CheckpointError(path: optimizerPath, message: "has no optimizer/step metadata: not an optimizer state")
        }
        // The optimizer counts its updates; a skipped (non-finite) step makes none.
        guard updates + state.skippedSteps == state.step else {
            throw CheckpointError(path: optimizerPath, message: "\(kind) state after \(updates) updates, but \(stateFile) is at step "
                                  + "\(state.step) with \(state.skippedSteps) skipped")
        }
    }

    /// Keeps the records of metrics.jsonl up to `step` (the step training continues from): records written after the
    /// checkpoint by a job that was then killed are dropped, as is a last line cut short, so every step is logged once.
    public static func trimMetrics(_ path: String, throughStep step: Int) throws {
        guard let data = FileManager.default.contents(atPath: path), !data.isEmpty else { return }
        var kept = Data(), changed = false
        for line in data.split(separator: 0x0A, omittingEmptySubsequences: false) where !line.isEmpty {
            let record = (try? JSONSerialization.jsonObject(with: Data(line))) as? [String: Any]
            if let s = record?["step"] as? Int, s <= step {
                kept.append(line); kept.append(0x0A)
            } else { changed = true }
        }
        if data.last != 0x0A { changed = true }
        guard changed else { return }
        try writeFileSynced(path + ".tmp", Array(kept))
        guard rename(path + ".tmp", path) == 0 else { throw CheckpointError(path: path, message: "rename failed: \(String(cString: strerror(errno)))") }
    }

    public static func loadState(_ dir: String) throws -> TrainerState {
        let path = (dir as NSString).appendingPathComponent(stateFile)
        guard let data = FileManager.default.contents(atPath: path) else { throw CheckpointError(path: path, message: "missing") }
        do { return try JSONDecoder().decode(TrainerState.self, from: data) } catch {
            throw CheckpointError(path: path, message: "not a trainer state: \(error)")
        }
    }
}

func writeFileSynced(_ path: String, _ bytes: [UInt8]) throws {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    guard fd >= 0 else { throw CheckpointError(path: path, message: "cannot create: \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    var off = 0
    while off < bytes.count {
        let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + off, bytes.count - off) }
        guard n > 0 else { throw CheckpointError(path: path, message: "write failed: \(String(cString: strerror(errno)))") }
        off += n
    }
    guard fsync(fd) == 0 else { throw CheckpointError(path: path, message: "fsync failed: \(String(cString: strerror(errno)))") }
}

func fsyncPath(_ path: String) {
    let fd = open(path, O_RDONLY)
    if fd >= 0 { fsync(fd); close(fd) }
}

/// A checkpoint file's size and CRC-32 (zlib's polynomial), recorded in trainer_state.json.
struct FileDigest: Codable, Equatable {
    var name: String
    var bytes: Int
    var crc32: UInt32

    static func of(_ path: String, name: String) throws -> FileDigest {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw CheckpointError(path: path, message: "cannot be read")
        }
        return FileDigest(name: name, bytes: data.count, crc32: data.withUnsafeBytes { CRC32.checksum($0) })
    }
}

/// trainer_state.json: the state's keys and "files" (the digests), in one object.
struct StoredState: Encodable {
    let state: TrainerState
    let files: [FileDigest]
    enum CodingKeys: String, CodingKey { case files }
    func encode(to encoder: Encoder) throws {
        try state.encode(to: encoder)
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(files, forKey: .files)
    }
}

struct StoredDigests: Decodable { let files: [FileDigest]? }

enum CRC32 {
    static let table: [UInt32] = (0..<256).map { n -> UInt32 in
        var c = UInt32(n)
        for _ in 0..<8 { c = c & 1 != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
        return c
    }

    static func checksum(_ bytes: UnsafeRawBufferPointer) -> UInt32 {
        var c: UInt32 = 0xFFFF_FFFF
        table.withUnsafeBufferPointer { t in
            for b in bytes { c = t[Int((c ^ UInt32(b)) & 0xFF)] ^ (c >> 8) }
        }
        return c ^ 0xFFFF_FFFF
    }
}

/// Test hook of the kill-loop test (launch/tests/killloop.sh), never set in normal runs: HGDPO_FAULT_CHECKPOINT_DELAY=S
/// sleeps S seconds after the checkpoint's tensor files and again after its state file, so that kills land while a
/// checkpoint is being written.
func faultDelay() {
    guard let v = RuntimeOptions.current.faults["HGDPO_FAULT_CHECKPOINT_DELAY"], let s = Double(v), s > 0 else { return }
    usleep(UInt32(s * 1e6))
}
