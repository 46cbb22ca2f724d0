// MappedFile: read-only mapping of whole files, errors naming the path, residency hints.

import Foundation
import MMapWeights
import XCTest

final class MappedFileTests: XCTestCase {
    func testMappedBytesEqualTheFileContents() throws {
        let dir = try makeScratchDirectory(self)
        let content = (0..<10_000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        let url = try writeFile(content, dir, "a.bin")
        let m = try MappedFile(url: url)
        XCTAssertEqual(m.size, content.count)
        XCTAssertEqual(Array(m.bytes), content)
        XCTAssertEqual(m.url, url)
    }

    func testEmptyFileMapsToZeroBytes() throws {
        let dir = try makeScratchDirectory(self)
        let m = try MappedFile(url: try writeFile([], dir, "empty"))
        XCTAssertEqual(m.size, 0)
        XCTAssertEqual(m.bytes.count, 0)
        m.willNeed(0..<100)
        m.release(0..<100, dropPageCache: true)
        XCTAssertEqual(m.residentBytes(0..<100), 0)
    }

    func testMissingFileIsFileNotFoundNamingThePath() throws {
        let dir = try makeScratchDirectory(self)
        let url = dir.appendingPathComponent("nope.safetensors")
        XCTAssertThrowsError(try MappedFile(url: url)) { error in
            let e = error as? WeightsError
            XCTAssertEqual(e?.code, .fileNotFound)
            XCTAssertTrue("\(error)".contains(url.path), "\(error)")
        }
    }

    func testDirectoryIsNotARegularFile() throws {
        let dir = try makeScratchDirectory(self)
        XCTAssertThrowsError(try MappedFile(url: dir)) { error in
            XCTAssertEqual((error as? WeightsError)?.code, .notARegularFile)
            XCTAssertTrue("\(error)".contains(dir.path))
        }
    }

    func testUnreadableFileIsUnreadable() throws {
        guard geteuid() != 0 else { throw XCTSkip("root can read any file") }
        let dir = try makeScratchDirectory(self)
        let url = try writeFile([1, 2, 3], dir, "secret")
        chmod(url.path, 0)
        XCTAssertThrowsError(try MappedFile(url: url)) { error in
            XCTAssertEqual((error as? WeightsError)?.code, .unreadable)
            XCTAssertTrue("\(error)".contains(url.path))
        }
    }

    func testReleasedPagesReadBackUnchanged() throws {
        let dir = try makeScratchDirectory(self)
        let content = (0..<(5 * MappedFile.pageSize + 123)).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }
        let m = try MappedFile(url: try writeFile(content, dir, "big"))
        m.willNeed(100..<(3 * MappedFile.pageSize))
        XCTAssertEqual(Array(m.bytes), content)  // touches every page
        XCTAssertGreaterThan(m.residentBytes(0..<m.size), 0)
        m.release(0..<m.size)
        m.release(-5..<(m.size + 1_000_000), dropPageCache: true)  // out-of-file parts are ignored
        XCTAssertEqual(Array(m.bytes), content)
    }
}
