import XCTest
final class CommandsTestsPlaceholder: XCTestCase { func testNothing() {} }
