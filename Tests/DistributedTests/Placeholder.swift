import XCTest
final class DistributedTestsPlaceholder: XCTestCase { func testNothing() {} }
