// SafetensorsIndex: sharded checkpoints behave like one file; shards open lazily and are validated.

import Foundation
import MMapWeights
import XCTest

final class SafetensorsIndexTests: XCTestCase {
    func makeShards(_ dir: URL) throws {
        var a = SafetensorsWriter()
        a.add("x.weight", shape: [2], float32: [1, 2])
        a.add("x.bias", dtype: .f16, shape: [1], bits16: [0x4000])
        try a.write(to: dir.appendingPathComponent("model-00001-of-00002.safetensors"))
        var b = SafetensorsWriter()
        b.add("y.weight", shape: [1], float32: [3])
        try b.write(to: dir.appendingPathComponent("model-00002-of-00002.safetensors"))
    }

    func writeIndex(_ json: String, _ dir: URL, _ name: String = "model.safetensors.index.json") throws -> URL {
        try writeFile(Array(json.utf8), dir, name)
    }

    let goodIndex = """
        {"metadata": {"total_size": 16}, "weight_map": {
          "x.weight": "model-00001-of-00002.safetensors", "x.bias": "model-00001-of-00002.safetensors",
          "y.weight": "model-00002-of-00002.safetensors"}}
        """

    func testLooksUpTensorsAcrossShards() throws {
        let dir = try makeScratchDirectory(self)
        try makeShards(dir)
        let index = try SafetensorsIndex(url: try writeIndex(goodIndex, dir))
        XCTAssertEqual(index.tensorNames, ["x.bias", "x.weight", "y.weight"])
        XCTAssertEqual(index.metadata["total_size"], "16")
        XCTAssertEqual(index.shardNames.count, 2)
        let source: any TensorSource = index
        XCTAssertTrue(source.contains("y.weight"))
        XCTAssertFalse(source.contains("z"))
        XCTAssertNil(try source.info("z"))
        let y = try XCTUnwrap(try source.info("y.weight"))
        XCTAssertEqual(Array(try XCTUnwrap(source.float32Pointer(y))), [3])
        XCTAssertTrue(y.file.url.lastPathComponent.hasPrefix("model-00002"))
        let bias = try source.require("x.bias")
        var out: [Float] = [0]
        try out.withUnsafeMutableBufferPointer { try source.copyAsFloat32(bias, into: $0) }
        XCTAssertEqual(out, [2])
        try index.openAllShards()
    }

    func testShardsOpenOnlyWhenUsed() throws {
        let dir = try makeScratchDirectory(self)
        try makeShards(dir)
        // Corrupt shard 2: lookups in shard 1 still work, lookups in shard 2 name the broken shard.
        try writeFile([1, 2, 3], dir, "model-00002-of-00002.safetensors")
        let index = try SafetensorsIndex(url: try writeIndex(goodIndex, dir))
        XCTAssertNotNil(try index.info("x.weight"))
        XCTAssertThrowsError(try index.info("y.weight")) { e in
            XCTAssertEqual((e as? WeightsError)?.code, .malformed)
            XCTAssertTrue("\(e)".contains("model-00002-of-00002.safetensors"), "\(e)")
        }
    }

    func testMissingShardIsFileNotFound() throws {
        let dir = try makeScratchDirectory(self)
        try makeShards(dir)
        try FileManager.default.removeItem(at: dir.appendingPathComponent("model-00001-of-00002.safetensors"))
        let index = try SafetensorsIndex(url: try writeIndex(goodIndex, dir))
        XCTAssertThrowsError(try index.info("x.weight")) { e in
            XCTAssertEqual((e as? WeightsError)?.code, .fileNotFound)
        }
    }

    func testTensorMissingFromItsShardIsMalformed() throws {
        let dir = try makeScratchDirectory(self)
        try makeShards(dir)
        let json = #"{"weight_map": {"y.weight": "model-00001-of-00002.safetensors"}}"#
        let index = try SafetensorsIndex(url: try writeIndex(json, dir))
        XCTAssertThrowsError(try index.info("y.weight")) { e in
            XCTAssertTrue("\(e)".contains("tensor \"y.weight\"") && "\(e)".contains("does not contain"), "\(e)")
        }
    }

    func testShardPathsMustStayInsideTheFolder() throws {
        let dir = try makeScratchDirectory(self)
        for shard in ["../evil.safetensors", "/etc/passwd", "a/../../b", ""] {
            let json = "{\"weight_map\": {\"w\": \"\(shard)\"}}"
            XCTAssertThrowsError(try SafetensorsIndex(url: try writeIndex(json, dir))) { e in
                XCTAssertEqual((e as? WeightsError)?.code, .malformed, shard)
                XCTAssertTrue("\(e)".contains("tensor \"w\""), "\(e)")
            }
        }
    }

    func testMalformedIndexesAreRejected() throws {
        let dir = try makeScratchDirectory(self)
        for json in [
            "", "[]", "{}", "{\"weight_map\": []}", "{\"weight_map\": {\"w\": 3}}", "{\"weight_map\": {", "nul",
        ] {
            XCTAssertThrowsError(try SafetensorsIndex(url: try writeIndex(json, dir)), json) { e in
                XCTAssertEqual((e as? WeightsError)?.code, .malformed, json)
            }
        }
    }
}
