import XCTest
final class IOTestsPlaceholder: XCTestCase { func testNothing() {} }
