// The one-job-per-folder rule of every command that writes a folder (train, encode, pool, score, eval): see
// IO/RunFolderLock.swift.
import IO
#if canImport(Glibc)
import Glibc
#endif

extension Commands {
    /// Takes `folder` for this job (creating it if needed), or throws `RunFolderLockError.held` naming the job that
    /// has it (exit code 2). A takeover of a dead job's lock is reported on stderr. Call it on one process per job
    /// (MPI rank 0) before writing into the folder, and `release()` the result when done (`defer`).
    static func lockRunFolder(_ folder: String, command: String) throws -> RunFolderLock {
        let lock = try RunFolderLock(folder: folder, command: command)
        if let note = lock.takeover { fputs("hgdpo: \(note)\n", stderr) }
        return lock
    }
}
