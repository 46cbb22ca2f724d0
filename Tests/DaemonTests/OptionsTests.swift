// Command-line value parsing for `sdd serve`: durations, socket modes, groups (sizes: MemoryPlannerTests).

import Daemon
import XCTest

final class OptionsTests: XCTestCase {
    func testDurationsParseLikeOllamaKeepAlive() throws {
        XCTAssertEqual(try DurationOption.parse("30s"), 30)
        XCTAssertEqual(try DurationOption.parse("5m"), 300)
        XCTAssertEqual(try DurationOption.parse("1h"), 3600)
        XCTAssertEqual(try DurationOption.parse("1h30m"), 5400)
        XCTAssertEqual(try DurationOption.parse("250ms"), 0.25)
        XCTAssertEqual(try DurationOption.parse("0"), 0)
        XCTAssertEqual(try DurationOption.parse("45"), 45)
        XCTAssertNil(try DurationOption.parse("-1"))
        XCTAssertNil(try DurationOption.parse("forever"))
    }

    func testBadDurationsAreErrorsThatQuoteTheInput() {
        for bad in ["", "5x", "m", "-5", "abc"] {
            XCTAssertThrowsError(try DurationOption.parse(bad, option: "--keep-alive")) { error in
                XCTAssertTrue("\(error)".contains("--keep-alive"), "\(error)")
            }
        }
    }

    func testSocketModesAreOctal() throws {
        XCTAssertEqual(try FileModeOption.parse("0660"), 0o660)
        XCTAssertEqual(try FileModeOption.parse("600"), 0o600)
        XCTAssertThrowsError(try FileModeOption.parse("0999"))
        XCTAssertThrowsError(try FileModeOption.parse("77777"))
        XCTAssertEqual(try GroupOption.resolve("0"), 0)
        XCTAssertThrowsError(try GroupOption.resolve("no-such-group-sdd"))
    }
}
