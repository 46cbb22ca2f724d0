// PNG and NPY output: pixels and text survive a round trip (unicode via iTXt), files are
// written atomically, bad input is an error, and .npy headers are byte-identical to numpy's.

import Foundation
import XCTest

@testable import Pipeline
import TestSupport

final class OutputTests: XCTestCase {
    var dir: URL!

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory
            .appendingPathComponent("output-\(getpid())-\(UUID().uuidString)", isDirectory: true)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: dir)
    }

    func gradient(_ w: Int, _ h: Int) -> [UInt8] {
        var rgb: [UInt8] = []
        for y in 0..<h {
            for x in 0..<w {
                rgb += [UInt8(x * 255 / max(w - 1, 1)), UInt8(y * 255 / max(h - 1, 1)), UInt8((x * y) & 0xFF)]
            }
        }
        return rgb
    }

    /// Chunk types in file order.
    func chunkTypes(_ d: [UInt8]) -> [String] {
        var types: [String] = []
        var pos = 8
        while pos + 12 <= d.count {
            let len = Int(d[pos]) << 24 | Int(d[pos + 1]) << 16 | Int(d[pos + 2]) << 8 | Int(d[pos + 3])
            types.append(String(decoding: d[(pos + 4)..<(pos + 8)], as: UTF8.self))
            pos += 12 + len
        }
        return types
    }

    // MARK: PNG

    func testPNGRoundTripsPixelsAndText() throws {
        let url = dir.appendingPathComponent("out.png")
        let rgb = gradient(37, 23)
        let text: [(key: String, value: String)] = [
            ("parameters", "a photo of a cat\nNegative prompt: blurry\nSteps: 20, Seed: 42"),
            ("prompt", "café crème, naïve — 猫と犬 🐱"),
            ("latin", "ÀÉÎõü ±²³"),
            ("empty", ""),
        ]
        try PNGWriter.write(rgb: rgb, width: 37, height: 23, text: text, to: url)
        let image = try PNGReader.read(from: url)
        XCTAssertEqual(image.width, 37)
        XCTAssertEqual(image.height, 23)
        XCTAssertEqual(image.rgb, rgb)
        XCTAssertEqual(image.text.map(\.key), text.map(\.key))
        XCTAssertEqual(image.text.map(\.value), text.map(\.value))
    }

    func testLatin1TextUsesTEXtAndUnicodeUsesITXt() throws {
        let bytes = try PNGWriter.encode(
            rgb: [1, 2, 3], width: 1, height: 1,
            text: [("a", "plain é"), ("b", "ユニコード")])
        let types = chunkTypes(bytes)
        XCTAssertEqual(types.first, "IHDR")
        XCTAssertEqual(types.last, "IEND")
        XCTAssertEqual(types.filter { $0 == "tEXt" || $0 == "iTXt" }, ["tEXt", "iTXt"])
        // tEXt holds Latin-1: "é" is the single byte 0xE9.
        XCTAssertNotNil(bytes.firstRange(of: Array("a\0plain ".utf8) + [0xE9]))
    }

    func testPNGOverwritesAtomicallyWithoutLeftovers() throws {
        let url = dir.appendingPathComponent("img.png")
        try Data("old".utf8).write(to: url)
        try PNGWriter.write(rgb: gradient(4, 4), width: 4, height: 4, text: [], to: url)
        try PNGWriter.write(rgb: gradient(5, 3), width: 5, height: 3, text: [], to: url)
        XCTAssertEqual(try PNGReader.read(from: url).width, 5)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir.path), ["img.png"])
    }

    func testPNGRejectsInvalidInputWithoutWriting() throws {
        let url = dir.appendingPathComponent("bad.png")
        let cases: [(rgb: [UInt8], w: Int, h: Int, text: [(key: String, value: String)])] = [
            ([1, 2], 1, 1, []),
            ([], 0, 0, []),
            ([UInt8](repeating: 0, count: 3), 1, -1, []),
            ([1, 2, 3], 1, 1, [("", "v")]),
            ([1, 2, 3], 1, 1, [(String(repeating: "k", count: 80), "v")]),
            ([1, 2, 3], 1, 1, [(" lead", "v")]),
            ([1, 2, 3], 1, 1, [("two  spaces", "v")]),
            ([1, 2, 3], 1, 1, [("ключ", "v")]),
            ([1, 2, 3], 1, 1, [("k", "nul\0inside")]),
            ([], 2_000_000, 1, []),
        ]
        for c in cases {
            XCTAssertThrowsError(try PNGWriter.write(rgb: c.rgb, width: c.w, height: c.h, text: c.text, to: url)) { e in
                XCTAssertTrue(e is OutputFileError)
                XCTAssertTrue("\(e)".hasPrefix(url.path), "\(e)")
            }
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: url.path))
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir.path), [])
    }

    func testPNGWriteIntoAMissingFolderNamesThePath() {
        let url = dir.appendingPathComponent("no/such/dir/x.png")
        XCTAssertThrowsError(try PNGWriter.write(rgb: [0, 0, 0], width: 1, height: 1, text: [], to: url)) { e in
            XCTAssertTrue("\(e)".hasPrefix(url.path), "\(e)")
        }
    }

    func testAReplaceThatFailsAtTheRenameLeavesTheTargetAndNoTempFile() throws {
        // A non-empty folder in the target's place makes rename(2) fail (EISDIR/ENOTEMPTY) even for root.
        let target = dir.appendingPathComponent("taken")
        try FileManager.default.createDirectory(at: target.appendingPathComponent("inside"), withIntermediateDirectories: true)
        XCTAssertThrowsError(try OutputFiles.writeAtomically([1, 2, 3], to: target)) { e in
            XCTAssertTrue("\(e)".hasPrefix(target.path), "\(e)")
            XCTAssertTrue("\(e)".contains("cannot rename the temporary file into place"), "\(e)")
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir.path), ["taken"])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: target.path), ["inside"])
    }

    func testPNGReaderRejectsCorruptFilesWithAnError() throws {
        let good = try PNGWriter.encode(rgb: gradient(8, 8), width: 8, height: 8, text: [("k", "v")])
        var corrupt: [[UInt8]] = [
            [], Array(good.prefix(8)), Array(good.prefix(40)), Array(good.prefix(good.count - 20)),
        ]
        var flipped = good
        flipped[good.count / 2] ^= 0x55
        corrupt.append(flipped)
        corrupt.append(Array("not a png at all".utf8))
        for (i, bytes) in corrupt.enumerated() {
            XCTAssertThrowsError(try PNGReader.decode(bytes), "case \(i)") { e in XCTAssertTrue(e is OutputFileError) }
        }
    }

    // MARK: NPY

    /// What `np.save` (numpy 2.4) writes before the data, for a float32 array of each shape.
    func numpyHeader(_ dict: String, spaces: Int) -> [UInt8] {
        [0x93] + Array("NUMPY".utf8) + [1, 0, 118, 0] + Array(dict.utf8) + Array(repeating: 0x20, count: spaces) + [
            0x0A
        ]
    }

    func testNPYHeaderMatchesNumpyExactly() throws {
        XCTAssertEqual(
            try NPYWriter.header(shape: [2, 4, 3, 5]),
            numpyHeader("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 4, 3, 5), }", spaces: 52))
        XCTAssertEqual(
            try NPYWriter.header(shape: [5]),
            numpyHeader("{'descr': '<f4', 'fortran_order': False, 'shape': (5,), }", spaces: 60))
        XCTAssertEqual(
            try NPYWriter.header(shape: []),
            numpyHeader("{'descr': '<f4', 'fortran_order': False, 'shape': (), }", spaces: 62))
        for shape in [[1], [3, 4], [1, 4, 64, 64], [123_456_789_012, 1]] {
            XCTAssertEqual(try NPYWriter.header(shape: shape).count % 64, 0, "\(shape)")
        }
    }

    func testNPYDataIsLittleEndianFloat32AfterTheHeader() throws {
        // np.arange(120, dtype=np.float32).reshape(2,4,3,5) * 0.5 - 1 starts with bytes 000080bf 000000bf 00000000.
        let data = (0..<120).map { Float($0) * 0.5 - 1 }
        let bytes = try NPYWriter.encode(float32: data, shape: [2, 4, 3, 5])
        XCTAssertEqual(bytes.count, 128 + 480)
        XCTAssertEqual(Array(bytes[128..<140]), [0x00, 0x00, 0x80, 0xBF, 0x00, 0x00, 0x00, 0xBF, 0, 0, 0, 0])
    }

    func testNPYRoundTripsThroughTheReader() throws {
        let url = dir.appendingPathComponent("latents.npy")
        let data = (0..<(1 * 4 * 8 * 8)).map { sin(Float($0)) }
        try NPYWriter.write(float32: data, shape: [1, 4, 8, 8], to: url)
        let (shape, back) = try NPYReader.readFloat32(from: url)
        XCTAssertEqual(shape, [1, 4, 8, 8])
        XCTAssertEqual(back, data)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir.path), ["latents.npy"])
    }

    func testNPYRejectsDataThatDoesNotFillTheShape() {
        XCTAssertThrowsError(
            try NPYWriter.write(float32: [1, 2, 3], shape: [2, 2], to: dir.appendingPathComponent("x.npy")))
        XCTAssertThrowsError(try NPYReader.decodeFloat32([0x93] + Array("NUMPY".utf8) + [1, 0, 200, 0]))
    }
}

final class ImageGridTests: XCTestCase {
    func testImagesAreTiledRowByRowWithSquareishColumns() {
        // Five 2×1 images, each filled with its index: 3 columns, 2 rows, the last cell black.
        let images = (1...5).map { [UInt8](repeating: UInt8($0), count: 2 * 1 * 3) }
        let grid = ImageGrid(images: images, width: 2, height: 1)
        XCTAssertEqual(grid.width, 6)
        XCTAssertEqual(grid.height, 2)
        let firstPixels = stride(from: 0, to: grid.rgb.count, by: 6).map { grid.rgb[$0] }
        XCTAssertEqual(firstPixels, [1, 2, 3, 4, 5, 0])
    }

    func testAGivenColumnCountMakesRowsOfThatLength() {
        let images = (1...6).map { [UInt8](repeating: UInt8($0), count: 2 * 1 * 3) }
        let grid = ImageGrid(images: images, width: 2, height: 1, columns: 2)
        XCTAssertEqual([grid.width, grid.height], [4, 3])
        XCTAssertEqual(stride(from: 0, to: grid.rgb.count, by: 6).map { grid.rgb[$0] }, [1, 2, 3, 4, 5, 6])
    }
}
