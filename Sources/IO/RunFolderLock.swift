// One job per output folder: `RUN_DIR/hgdpo.lock` names the job that writes the folder (command, host, pid, Slurm job
// id, start time) and carries a heartbeat that the holder rewrites every few seconds. A second job finds it and stops
// at once with an error naming the holder; the lock of a dead job is taken over: at once when the holder ran on this
// host and its process is gone (same host name and boot id, pid absent or started at another time: pid reuse does
// not fool it), or when its heartbeat is older than the holder's stated `stale_after_s` (any host).
//
// Shared filesystems (NFS): no flock/fcntl locks (not reliable on NFS, lost with the client). The lock is created the
// way liblockfile and Mercurial do it: the content goes into a uniquely named file in the folder, which is then
// hard-linked to `hgdpo.lock`; link() is atomic on the server (NFSv2 and later) and fails when the name exists, and a
// link whose reply was lost is recognised by the link count of the unique file (2). Heartbeats replace the file with
// rename(), also atomic on the server. A takeover renames the stale file away (only one taker can succeed), checks it
// moved the file it judged stale, then links its own. The heartbeat reads the lock back first: a holder that finds
// another job's token there (it was stopped, e.g. SIGSTOP, for longer than `stale_after_s` and was taken over) stops
// the process (exit 2) instead of writing next to the new holder. The heartbeat is judged stale by the holder's
// wall clock against the reader's: hosts must agree within a fraction of `stale_after_s` (NTP does). The folder's
// filesystem must support hard links (local disks, NFS, Lustre, GPFS, BeeGFS do; some SMB/FUSE mounts do not, and
// taking the lock then fails with an error naming the file).
//
// Usage: `let lock = try RunFolderLock(folder: out, command: "train")` before writing anything into `out` (on one
// process per job, e.g. MPI rank 0), `lock.release()` when done (also on errors: `defer`). A kill -9 leaves the file;
// the next job takes it over as above.
import Foundation
import Tensors
#if canImport(Glibc)
import Glibc
#endif

/// Who holds a run folder: the JSON content of `hgdpo.lock`.
public struct RunFolderLockHolder: Codable, Sendable, Equatable {
    public var command: String
    public var host: String
    public var pid: Int32
    /// The process's start time in clock ticks since boot (/proc/PID/stat field 22): tells a reused pid apart.
    public var pidStart: UInt64?
    /// /proc/sys/kernel/random/boot_id of the holder's host: after a reboot no old pid is alive.
    public var bootID: String?
    public var slurmJobID: String?
    public var started: Double
    public var heartbeat: Double
    public var heartbeatEvery: Double
    public var staleAfter: Double
    public var token: String

    enum CodingKeys: String, CodingKey {
        case command, host, pid, pidStart = "pid_start", bootID = "boot_id", slurmJobID = "slurm_job_id", started
        case heartbeat, heartbeatEvery = "heartbeat_every_s", staleAfter = "stale_after_s", token
    }

    /// "hgdpo train, pid 123 on node01 (Slurm job 42), started 2026-12-07 01:50:00 UTC, last heartbeat 3 s ago"
    public func describe(now: Double = Date().timeIntervalSince1970) -> String {
        let slurm = slurmJobID.map { " (Slurm job \($0))" } ?? ""
        let age = max(0, now - heartbeat)
        return "hgdpo \(command), pid \(pid) on \(host)\(slurm), started \(utcString(started)), last heartbeat \(Int(age.rounded())) s ago"
    }
}

public enum RunFolderLockError: Error, UserInputError, CustomStringConvertible {
    /// Another live job holds the folder.
    case held(folder: String, holder: RunFolderLockHolder)
    /// The lock file exists but is not one hgdpo wrote.
    case unreadable(path: String, reason: String)
    case cannotCreate(path: String, reason: String)

    public var description: String {
        switch self {
        case let .held(folder, h):
            return "\(folder) is in use by another job: \(h.describe()); one job per folder: wait for it to end, stop it, "
                + "or choose another folder (its lock is taken over once its process is gone, or \(Int(h.staleAfter)) s "
                + "after its last heartbeat)"
        case let .unreadable(path, reason):
            return "\(path): not a lock file written by hgdpo (\(reason)); if no job uses this folder, remove the file"
        case let .cannotCreate(path, reason): return "\(path): cannot create the lock file: \(reason)"
        }
    }
}

public final class RunFolderLock: @unchecked Sendable {
    public static let fileName = "hgdpo.lock"
    /// Defaults: a heartbeat every 15 s, stale after 5 min without one (HGDPO_LOCK_HEARTBEAT / HGDPO_LOCK_STALE_AFTER
    /// override them, in seconds).
    public static let defaultHeartbeat = 15.0
    public static let defaultStaleAfter = 300.0

    public let folder: String
    public let path: String
    /// What the lock file says now (the heartbeat thread updates it).
    public var holder: RunFolderLockHolder {
        condition.lock(); defer { condition.unlock() }
        return current
    }
    private var current: RunFolderLockHolder
    private let token: String
    /// What happened on acquiring, e.g. "took over … from a dead job" (nil for a plain acquisition).
    public let takeover: String?
    private let createdFolder: Bool
    private let condition = NSCondition()
    private var stopped = false
    private var thread: Thread?

    /// Takes the folder (creating it if needed) or throws `RunFolderLockError.held` naming the live holder.
    /// `onLost` runs on the heartbeat thread if another job took the lock over; by default it prints why and ends
    /// the process with exit code 2.
    public init(folder: String, command: String, heartbeatEvery: Double? = nil, staleAfter: Double? = nil,
                onLost: (@Sendable (String) -> Void)? = nil) throws {
        let every = heartbeatEvery ?? RuntimeOptions.current.lockHeartbeat ?? Self.defaultHeartbeat
        let stale = staleAfter ?? RuntimeOptions.current.lockStaleAfter ?? Self.defaultStaleAfter
        self.folder = folder
        self.path = (folder as NSString).appendingPathComponent(Self.fileName)
        let fm = FileManager.default
        var isDir: ObjCBool = false
        if fm.fileExists(atPath: folder, isDirectory: &isDir) {
            guard isDir.boolValue else { throw RunFolderLockError.cannotCreate(path: path, reason: "\(folder) is not a folder") }
            createdFolder = false
        } else {
            do { try fm.createDirectory(atPath: folder, withIntermediateDirectories: true) } catch {
                throw RunFolderLockError.cannotCreate(path: path, reason: "cannot create the folder: \(error.localizedDescription)")
            }
            createdFolder = true
        }
        let now = Date().timeIntervalSince1970
        let me = ProcessIdentity.current
        let mine = RunFolderLockHolder(command: command, host: me.host, pid: getpid(), pidStart: me.start, bootID: me.bootID,
                                       slurmJobID: RuntimeOptions.current.slurmJobID, started: now, heartbeat: now, heartbeatEvery: every,
                                       staleAfter: stale, token: randomToken())
        current = mine
        token = mine.token
        takeover = try Self.acquire(path: path, holder: mine)
        let lost = onLost ?? { message in
            fputs("hgdpo: error: \(message)\n", stderr)
            _exit(2)
        }
        let t = Thread { [weak self] in self?.heartbeatLoop(onLost: lost) }
        t.name = "hgdpo-lock-heartbeat"
        thread = t
        t.start()
    }

    deinit { release() }

    /// The lock file or one of its temporary files (for commands that check that a folder is otherwise empty).
    public static func isLockFile(_ name: String) -> Bool { name == fileName || name.hasPrefix(".\(fileName).") }

    /// Stops the heartbeat and removes the lock (if it is still ours); removes the folder too if the lock created it
    /// and nothing else was written. Safe to call more than once.
    public func release() {
        condition.lock()
        let wasStopped = stopped
        stopped = true
        condition.broadcast()
        condition.unlock()
        guard !wasStopped else { return }
        if let onDisk = try? Self.read(path), onDisk.token == token { unlink(path) }
        if createdFolder { rmdir(folder) }
    }

    // MARK: - Acquiring

    /// Links a complete lock file into place; takes over a dead holder's. Returns a takeover note, or nil.
    static func acquire(path: String, holder: RunFolderLockHolder) throws -> String? {
        let dir = (path as NSString).deletingLastPathComponent
        let unique = (dir as NSString).appendingPathComponent(".\(fileName).\(holder.host).\(holder.pid).\(holder.token)")
        try writeSynced(unique, holder)
        defer { unlink(unique) }
        var note: String?
        for _ in 0..<20 {
            let linked = link(unique, path) == 0
            let err = errno
            if linked || linkCount(unique) == 2 { return note }
            guard err == EEXIST else {
                throw RunFolderLockError.cannotCreate(path: path, reason: String(cString: strerror(err)))
            }
            let other: RunFolderLockHolder
            do { other = try read(path) } catch RunFolderLockError.unreadable(_, let reason) where reason == "vanished" {
                continue   // released between our link() and read(): try again
            }
            guard let why = deadReason(other, now: Date().timeIntervalSince1970) else {
                throw RunFolderLockError.held(folder: dir, holder: other)
            }
            // Move the stale file aside; only one taker's rename finds it. Then make sure it was the file we judged.
            let aside = (dir as NSString).appendingPathComponent(".\(fileName).stale.\(holder.token)")
            guard rename(path, aside) == 0 else { continue }
            let moved = try? read(aside)
            if moved?.token != other.token { _ = link(aside, path) }   // a fresh lock of another taker: put it back
            unlink(aside)
            if moved?.token == other.token {
                note = "took over \(path) from \(other.describe()): \(why)"
            }
        }
        throw RunFolderLockError.cannotCreate(path: path, reason: "the lock kept changing hands (20 attempts)")
    }

    /// Why `h` no longer holds its lock (nil: it does, as far as this process can tell).
    static func deadReason(_ h: RunFolderLockHolder, now: Double) -> String? {
        let me = ProcessIdentity.current
        if h.host == me.host, let boot = h.bootID, let myBoot = me.bootID {
            if boot != myBoot { return "its host has rebooted since" }
            guard let stat = ProcessIdentity.stat(pid: h.pid) else { return "its process (pid \(h.pid)) is gone" }
            if let recorded = h.pidStart, recorded != stat.start { return "its process (pid \(h.pid)) is gone (the pid was reused)" }
            // A zombie (killed, not yet reaped by its parent) has exited: it holds no file and writes nothing.
            if stat.state == "Z" || stat.state == "X" { return "its process (pid \(h.pid)) has exited" }
        }
        let age = now - h.heartbeat
        if age > h.staleAfter { return "no heartbeat for \(Int(age)) s (stale after \(Int(h.staleAfter)) s)" }
        return nil
    }

    // MARK: - Heartbeat

    private func heartbeatLoop(onLost: @Sendable (String) -> Void) {
        while true {
            condition.lock()
            let deadline = Date(timeIntervalSinceNow: current.heartbeatEvery)
            while !stopped && Date() < deadline { _ = condition.wait(until: deadline) }
            let stop = stopped
            condition.unlock()
            if stop { return }
            if let message = beat() {
                condition.lock(); let stop = stopped; condition.unlock()
                if !stop { onLost(message) }
                return
            }
        }
    }

    /// Rewrites the lock with a new heartbeat; returns a message when the lock is no longer ours. A failed write
    /// (e.g. a full disk) is not a loss: the next beat tries again.
    func beat() -> String? {
        let onDisk: RunFolderLockHolder
        do { onDisk = try Self.read(path) } catch RunFolderLockError.unreadable(_, let reason) where reason == "vanished" {
            return "\(path) was removed while this job held it; stopping so that two jobs do not write \(folder)"
        } catch { return nil }   // unreadable for a moment (NFS): try again at the next beat
        var next = holder
        guard onDisk.token == token else {
            return "\(folder) was taken over by another job (\(onDisk.describe())) while this one did not beat "
                + "its heartbeat for \(Int(next.staleAfter)) s; stopping so that two jobs do not write it"
        }
        next.heartbeat = Date().timeIntervalSince1970
        let tmp = (folder as NSString).appendingPathComponent(".\(Self.fileName).beat.\(token)")
        do {
            try Self.writeSynced(tmp, next)
            guard rename(tmp, path) == 0 else { unlink(tmp); return nil }
            condition.lock(); current = next; condition.unlock()
        } catch { unlink(tmp) }
        return nil
    }

    // MARK: - Files

    static func read(_ path: String) throws -> RunFolderLockHolder {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw RunFolderLockError.unreadable(path: path, reason: "vanished")
        }
        do { return try JSONDecoder().decode(RunFolderLockHolder.self, from: data) } catch {
            throw RunFolderLockError.unreadable(path: path, reason: "\(data.count) bytes, not the expected JSON")
        }
    }

    static func writeSynced(_ path: String, _ holder: RunFolderLockHolder) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let bytes = Array(try encoder.encode(holder)) + [0x0A]
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        guard fd >= 0 else { throw RunFolderLockError.cannotCreate(path: path, reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress!, $0.count) }
        guard n == bytes.count, fsync(fd) == 0 else {
            let reason = String(cString: strerror(errno))
            unlink(path)
            throw RunFolderLockError.cannotCreate(path: path, reason: reason)
        }
    }

    static func linkCount(_ path: String) -> Int {
        var st = stat()
        return stat(path, &st) == 0 ? Int(st.st_nlink) : 0
    }
}

/// This process's host name, start time and boot id (Linux /proc; nil elsewhere).
struct ProcessIdentity {
    let host: String
    let start: UInt64?
    let bootID: String?

    static let current: ProcessIdentity = {
        var buf = [CChar](repeating: 0, count: 256)
        gethostname(&buf, buf.count - 1)
        let boot = (try? String(contentsOfFile: "/proc/sys/kernel/random/boot_id", encoding: .utf8))?
            .trimmingCharacters(in: .whitespacesAndNewlines)
        return ProcessIdentity(host: String(cString: buf), start: stat(pid: getpid())?.start, bootID: boot)
    }()

    /// The state (field 3: R, S, D, Z, …) and start time (field 22) of /proc/PID/stat; nil when there is no such process.
    static func stat(pid: Int32) -> (state: Character, start: UInt64)? {
        // The fields follow the parenthesised command name, which may contain spaces and parentheses.
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = text.lastIndex(of: ")") else { return nil }
        let fields = text[text.index(after: close)...].split(separator: " ")
        guard fields.count > 19, let state = fields[0].first, let start = UInt64(fields[19]) else { return nil }
        return (state, start)
    }
}

private func randomToken() -> String {
    var g = SystemRandomNumberGenerator()
    return (0..<2).map { _ in String(g.next() as UInt64, radix: 16) }.joined()
}

func utcString(_ t: Double) -> String {
    let f = DateFormatter()
    f.locale = Locale(identifier: "en_US_POSIX")
    f.timeZone = TimeZone(identifier: "UTC")
    f.dateFormat = "yyyy-MM-dd HH:mm:ss 'UTC'"
    return f.string(from: Date(timeIntervalSince1970: t))
}
