import Foundation
import TestSupport
import XCTest
@testable import IO
#if canImport(Glibc)
import Glibc
#endif

final class RunFolderLockTests: XCTestCase {
    func holderFile(_ folder: String) -> String { (folder as NSString).appendingPathComponent(RunFolderLock.fileName) }

    /// A lock file as another job would have written it.
    func plant(_ folder: String, host: String, pid: Int32, pidStart: UInt64?, heartbeatAge: Double, staleAfter: Double = 300) throws {
        let me = ProcessIdentity.current
        let now = Date().timeIntervalSince1970
        let h = RunFolderLockHolder(command: "train", host: host, pid: pid, pidStart: pidStart, bootID: me.bootID, slurmJobID: "4242",
                                    started: now - 1000, heartbeat: now - heartbeatAge, heartbeatEvery: 15, staleAfter: staleAfter,
                                    token: "planted")
        try RunFolderLock.writeSynced(holderFile(folder), h)
    }

    func testSecondJobIsRefusedWithTheHolderNamedAndReleaseFreesTheFolder() throws {
        let dir = (try temporaryDirectory(self) as NSString).appendingPathComponent("run")
        let first = try RunFolderLock(folder: dir, command: "train")
        XCTAssertTrue(FileManager.default.fileExists(atPath: holderFile(dir)))
        XCTAssertNil(first.takeover)
        XCTAssertThrowsError(try RunFolderLock(folder: dir, command: "encode")) { error in
            let text = "\(error)"
            XCTAssertTrue(text.contains("\(dir) is in use by another job: hgdpo train, pid \(getpid()) on \(ProcessIdentity.current.host)"), text)
        }
        // No temporary files are left by the refused attempt.
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), [RunFolderLock.fileName])
        first.release()
        // The folder was created by the lock and is empty again: removed.
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir))
        let second = try RunFolderLock(folder: dir, command: "train")
        try "x".write(toFile: (dir as NSString).appendingPathComponent("metrics.jsonl"), atomically: true, encoding: .utf8)
        second.release()
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), ["metrics.jsonl"], "a folder with files is kept")
    }

    func testDeadProcessOnThisHostIsTakenOverAtOnce() throws {
        let dir = try temporaryDirectory(self)
        // A pid that has exited: a child we waited for.
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/true")
        try p.run()
        p.waitUntilExit()
        try plant(dir, host: ProcessIdentity.current.host, pid: p.processIdentifier, pidStart: 1, heartbeatAge: 0)
        let lock = try RunFolderLock(folder: dir, command: "train")
        defer { lock.release() }
        XCTAssertTrue(lock.takeover?.contains("pid \(p.processIdentifier)") ?? false, lock.takeover ?? "no takeover")
        XCTAssertTrue(lock.takeover?.contains("is gone") ?? false, lock.takeover ?? "")
        XCTAssertEqual(try RunFolderLock.read(holderFile(dir)).token, lock.holder.token)
    }

    /// A killed process its parent has not reaped yet (a zombie) has exited: its lock is taken over at once.
    func testZombieHolderIsDead() throws {
        let dir = try temporaryDirectory(self)
        var child: pid_t = 0
        var argv: [UnsafeMutablePointer<CChar>?] = [strdup("/bin/true"), nil]
        defer { free(argv[0]) }
        XCTAssertEqual(posix_spawn(&child, "/bin/true", nil, nil, &argv, nil), 0)
        // Not waited for: once it has exited it stays a zombie until waitpid.
        var state: Character = "R"
        for _ in 0..<200 where state != "Z" { usleep(10_000); state = ProcessIdentity.stat(pid: child)?.state ?? "?" }
        XCTAssertEqual(state, "Z")
        try plant(dir, host: ProcessIdentity.current.host, pid: child, pidStart: ProcessIdentity.stat(pid: child)?.start, heartbeatAge: 0)
        let lock = try RunFolderLock(folder: dir, command: "train")
        lock.release()
        var status: Int32 = 0
        waitpid(child, &status, 0)
        XCTAssertTrue(lock.takeover?.contains("pid \(child)) has exited") ?? false, lock.takeover ?? "no takeover")
    }

    func testReusedPidIsNotMistakenForTheHolder() throws {
        let dir = try temporaryDirectory(self)
        // Our own pid (alive) but another start time: the recorded process is gone and the pid was reused.
        try plant(dir, host: ProcessIdentity.current.host, pid: getpid(), pidStart: 1, heartbeatAge: 0)
        let lock = try RunFolderLock(folder: dir, command: "train")
        defer { lock.release() }
        XCTAssertTrue(lock.takeover?.contains("reused") ?? false, lock.takeover ?? "no takeover")
    }

    func testOtherHostIsJudgedByItsHeartbeat() throws {
        let dir = try temporaryDirectory(self)
        try plant(dir, host: "elsewhere-node", pid: 1, pidStart: nil, heartbeatAge: 20, staleAfter: 300)
        XCTAssertThrowsError(try RunFolderLock(folder: dir, command: "train")) { error in
            let text = "\(error)"
            XCTAssertTrue(text.contains("pid 1 on elsewhere-node (Slurm job 4242)"), text)
            XCTAssertTrue(text.contains("last heartbeat 20 s ago"), text)
            XCTAssertTrue(text.contains("300 s after its last heartbeat"), text)
        }
        try plant(dir, host: "elsewhere-node", pid: 1, pidStart: nil, heartbeatAge: 301, staleAfter: 300)
        let lock = try RunFolderLock(folder: dir, command: "train")
        defer { lock.release() }
        XCTAssertTrue(lock.takeover?.contains("no heartbeat for 301 s") ?? false, lock.takeover ?? "no takeover")
    }

    func testHeartbeatAdvancesAndLossIsNoticed() throws {
        let dir = try temporaryDirectory(self)
        let lost = expectation(description: "lock lost")
        let message = LockedBox("")
        let lock = try RunFolderLock(folder: dir, command: "train", heartbeatEvery: 0.05, staleAfter: 1) { text in
            message.value = text
            lost.fulfill()
        }
        defer { lock.release() }
        let first = try RunFolderLock.read(holderFile(dir)).heartbeat
        usleep(300_000)
        XCTAssertGreaterThan(try RunFolderLock.read(holderFile(dir)).heartbeat, first)
        // Another job takes the folder over (as after a SIGSTOP longer than stale_after_s): the holder notices.
        try plant(dir, host: "elsewhere-node", pid: 77, pidStart: nil, heartbeatAge: 0)
        wait(for: [lost], timeout: 5)
        XCTAssertTrue(message.value.contains("was taken over by another job (hgdpo train, pid 77 on elsewhere-node"), message.value)
        // The planted lock is not removed by the old holder's release.
        lock.release()
        XCTAssertEqual(try RunFolderLock.read(holderFile(dir)).token, "planted")
    }

    func testForeignFileIsAnErrorNamingIt() throws {
        let dir = try temporaryDirectory(self)
        try "locked by me".write(toFile: holderFile(dir), atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try RunFolderLock(folder: dir, command: "train")) { error in
            XCTAssertTrue("\(error)".hasPrefix("\(holderFile(dir)): not a lock file written by hgdpo"), "\(error)")
        }
    }
}

final class LockedBox<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: T
    init(_ value: T) { stored = value }
    var value: T {
        get { lock.lock(); defer { lock.unlock() }; return stored }
        set { lock.lock(); stored = newValue; lock.unlock() }
    }
}
