// Checkpoints: RUN_DIR/step-NNNNNN/ with the LoRA (diffusers format, loadable as is), the optimizer state and the
// trainer state, written into a temporary folder, fsynced, renamed into place, then `latest` is pointed at it
// (atomically); only the last K are kept. A crash at any moment leaves every complete checkpoint intact.
import Foundation
import IO
import NN
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
        try? fm.removeItem(atPath: tmp)
        try fm.createDirectory(atPath: tmp, withIntermediateDirectories: true)
        do {
            try LoRAFile.write(lora, to: (tmp as NSString).appendingPathComponent(loraFile),
                               extraMetadata: ["hgdpo_step": String(state.step)])
            let (tensors, meta) = optimizer.stateEntries()
            try SafeTensors.write(tensors, metadata: meta, to: (tmp as NSString).appendingPathComponent(optimizerFile))
            try writeFileSynced((tmp as NSString).appendingPathComponent(stateFile), JSONEncoderSorted.encode(state))
            fsyncPath(tmp)
            if fm.fileExists(atPath: final) { try fm.removeItem(atPath: final) }   // re-saving the same step
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
        try prune(runDir: runDir, keep: keep)
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

    static func prune(runDir: String, keep: Int) throws {
        guard keep > 0 else { return }
        let all = list(runDir: runDir)
        for (_, path) in all.dropLast(keep) { try FileManager.default.removeItem(atPath: path) }
    }

    /// `--resume auto`: the folder `latest` names in RUN_DIR (nil when the run is new); `--resume DIR`: that folder.
    public static func resolve(_ resume: String, runDir: String) throws -> String? {
        if resume == "auto" {
            let latest = (runDir as NSString).appendingPathComponent("latest")
            guard let text = try? String(contentsOfFile: latest, encoding: .utf8) else {
                return list(runDir: runDir).last?.path      // no pointer: the newest complete folder, if any
            }
            let dir = (runDir as NSString).appendingPathComponent(text.trimmingCharacters(in: .whitespacesAndNewlines))
            guard FileManager.default.fileExists(atPath: (dir as NSString).appendingPathComponent(stateFile)) else {
                throw CheckpointError(path: latest, message: "points at \(dir), which is not a complete checkpoint")
            }
            return dir
        }
        guard FileManager.default.fileExists(atPath: (resume as NSString).appendingPathComponent(stateFile)) else {
            throw CheckpointError(path: resume, message: "is not a checkpoint folder (no \(stateFile))")
        }
        return resume
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
