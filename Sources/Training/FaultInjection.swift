// Test-only: the fault hooks of the trainer's failure tests (Tests/TrainingTests, launch/tests/failures.sh). They
// exist only when the environment read at start-up has HGDPO_FAULT_* (RuntimeOptions.faults); a normal run has none.
#if canImport(Glibc)
import Glibc
#endif

/// Test hooks for the fault tests (never set in normal runs): `HGDPO_FAULT_NAN="rank=R,from_step=S"` puts a NaN into
/// rank R's gradients from step S on; `HGDPO_FAULT_EXIT="rank=R,step=S"` kills rank R (SIGKILL) at step S;
/// `HGDPO_FAULT_THROW="rank=R,step=S"` makes rank R fail with an error at step S (the other ranks are in a collective).
struct FaultInjection {
    var nanRank: Int?, nanFrom = 0, exitRank: Int?, exitStep = 0, throwRank: Int?, throwStep = 0

    /// The hooks `specs` (RuntimeOptions.faults: HGDPO_FAULT_* → value) ask for; nil when there are none.
    init?(_ specs: [String: String]) {
        guard !specs.isEmpty else { return nil }
        func parse(_ name: String) -> [String: Int]? {
            guard let v = specs[name] else { return nil }
            var d: [String: Int] = [:]
            for part in v.split(separator: ",") {
                let kv = part.split(separator: "=")
                if kv.count == 2, let n = Int(kv[1]) { d[String(kv[0])] = n }
            }
            return d
        }
        if let d = parse("HGDPO_FAULT_NAN") { nanRank = d["rank"]; nanFrom = d["from_step"] ?? 1 }
        if let d = parse("HGDPO_FAULT_EXIT") { exitRank = d["rank"]; exitStep = d["step"] ?? 1 }
        if let d = parse("HGDPO_FAULT_THROW") { throwRank = d["rank"]; throwStep = d["step"] ?? 1 }
    }

    func inject(rank: Int, step: Int, grads: DoubleBuffer) throws {
        if exitRank == rank && step == exitStep { raise(SIGKILL) }
        if throwRank == rank && step == throwStep { throw TrainError("fault injected by HGDPO_FAULT_THROW at step \(step)") }
        if nanRank == rank && step >= nanFrom && grads.count > 0 { grads.ptr[0] = .nan }
    }
}

