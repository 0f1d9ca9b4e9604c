import XCTest
import Tensors

/// The environment is read once into RuntimeOptions; these are the rules it applies.
final class RuntimeOptionsTests: XCTestCase {
    func testEnvironmentParsing() {
        let o = RuntimeOptions(environment: ["HGDPO_THREADS": "3", "OMP_NUM_THREADS": "5", "HGDPO_ATTENTION": "blas",
                                             "HGDPO_CONV": "blas", "HGDPO_BF16_PATH": "generic",
                                             "HGDPO_FAULT_NAN": "rank=1,from_step=3", "PATH": "/bin",
                                             "HGDPO_LOCK_HEARTBEAT": "0.5", "HGDPO_LOCK_STALE_AFTER": "2"])
        XCTAssertEqual(o.threads, 3)
        XCTAssertEqual(o.attentionKernel, "blas")
        XCTAssertTrue(o.convolutionsOnBLAS)
        XCTAssertEqual(o.bf16Path, .generic)
        XCTAssertEqual(o.faults, ["HGDPO_FAULT_NAN": "rank=1,from_step=3"])
        XCTAssertEqual(o.lockHeartbeat, 0.5)
        XCTAssertEqual(o.lockStaleAfter, 2)
        // OMP_NUM_THREADS is the fallback; bad values fall back to the defaults.
        XCTAssertEqual(RuntimeOptions(environment: ["HGDPO_THREADS": "0", "OMP_NUM_THREADS": "5"]).threads, 5)
        let bad = RuntimeOptions(environment: ["HGDPO_THREADS": "x", "HGDPO_CONV": "fast", "HGDPO_BF16_PATH": "avx9"])
        XCTAssertEqual(bad, RuntimeOptions.defaults)
    }
}
