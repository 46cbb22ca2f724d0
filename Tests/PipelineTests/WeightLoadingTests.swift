// ComponentWeights: finds a component's weights like diffusers, returns zero-copy F32/F16/BF16 or
// converted F64 weights, and names tensor, file and shapes in every error.

import Foundation
import MMapWeights
import TiledKernels
import XCTest

@testable import Pipeline

/// A Weight's values as F32 (any stored type), read while the Weight (and so its owner) is certainly
/// alive: its bytes are an unowned pointer, so reading after the Weight is gone could see freed storage.
func floats(_ w: Weight) -> [Float] {
    withExtendedLifetime(w) { w.dequantized() }
}

final class WeightLoadingTests: XCTestCase {
    var root: URL!

    override func setUpWithError() throws {
        root = FileManager.default.temporaryDirectory
            .appendingPathComponent("weightloading-\(getpid())-\(UUID().uuidString)", isDirectory: true)
        try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: root)
    }

    /// Creates `root/component/name` with `writer`'s tensors.
    @discardableResult
    func put(_ writer: SafetensorsWriter, _ component: String, _ name: String) throws -> URL {
        let dir = root.appendingPathComponent(component, isDirectory: true)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let url = dir.appendingPathComponent(name)
        try writer.write(to: url)
        return url
    }

    func sampleWriter(bias: Float = 0.5) -> SafetensorsWriter {
        var w = SafetensorsWriter()
        w.add("conv.weight", shape: [2, 1, 1, 2], float32: [1, 2, 3, 4])
        w.add("conv.bias", shape: [2], float32: [bias, -bias])
        w.add("norm.weight", dtype: .f16, shape: [3], bits16: [0x3C00, 0xC000, 0x0001])
        w.add("norm.bias", dtype: .bf16, shape: [1], bits16: [0x3FC0])
        w.add(
            "scale", dtype: .f64, shape: [1], bytes: withUnsafeBytes(of: (0.25).bitPattern.littleEndian) { Array($0) })
        w.add("position_ids", dtype: .i64, shape: [1], bytes: [UInt8](repeating: 0, count: 8))
        return w
    }

    func testAlignedF32WeightsPointIntoTheMapping() throws {
        try put(sampleWriter(), "unet", "diffusion_pytorch_model.safetensors")
        let weights = try ComponentWeights(directory: root, component: "unet")
        let w = try weights.weight("conv.weight", shape: [2, 1, 1, 2])
        XCTAssertEqual(floats(w), [1, 2, 3, 4])
        XCTAssertEqual(w.shape, [2, 1, 1, 2])
        XCTAssertTrue(w.owner is MappedFile)
    }

    func testHalfAndBFloatWeightsStayTypedInTheMappingAndDoubleIsConvertedToF32() throws {
        try put(sampleWriter(), "unet", "diffusion_pytorch_model.safetensors")
        let weights = try ComponentWeights(directory: root, component: "unet")
        let h = try weights.weight("norm.weight")
        XCTAssertEqual(h.type, .f16)
        XCTAssertTrue(h.owner is MappedFile)
        XCTAssertEqual(floats(h), [1, -2, Float(sign: .plus, exponent: -24, significand: 1)])
        let b = try weights.weight("norm.bias")
        XCTAssertEqual(b.type, .bf16)
        XCTAssertTrue(b.owner is MappedFile)
        XCTAssertEqual(floats(b), [1.5])
        let d = try weights.weight("scale")
        XCTAssertTrue(d.owner is WeightBox)
        XCTAssertEqual(floats(d), [0.25])
    }

    func testWeightsOutliveTheirComponentWeights() throws {
        try put(sampleWriter(), "unet", "diffusion_pytorch_model.safetensors")
        var weights: ComponentWeights? = try ComponentWeights(directory: root, component: "unet")
        let w = try weights!.weight("conv.bias")
        weights = nil
        XCTAssertEqual(floats(w), [0.5, -0.5])
    }

    func testShapeMismatchNamesTensorExpectedAndFound() throws {
        let url = try put(sampleWriter(), "vae", "diffusion_pytorch_model.safetensors")
        let weights = try ComponentWeights(directory: root, component: "vae")
        XCTAssertThrowsError(try weights.weight("conv.weight", shape: [2, 1, 3, 3])) { e in
            XCTAssertEqual((e as? WeightsError)?.code, .shapeMismatch)
            XCTAssertEqual(
                "\(e)", "\(url.path): tensor \"conv.weight\": expected shape [2, 1, 3, 3], found [2, 1, 1, 2]")
        }
    }

    func testMissingTensorNamesTensorAndFile() throws {
        let url = try put(sampleWriter(), "vae", "diffusion_pytorch_model.safetensors")
        let weights = try ComponentWeights(directory: root, component: "vae")
        XCTAssertFalse(weights.has("decoder.conv_in.weight"))
        XCTAssertTrue(weights.has("conv.weight"))
        XCTAssertThrowsError(try weights.weight("decoder.conv_in.weight")) { e in
            XCTAssertEqual((e as? WeightsError)?.code, .missingTensor)
            XCTAssertTrue("\(e)".hasPrefix(url.path), "\(e)")
            XCTAssertTrue("\(e)".contains("tensor \"decoder.conv_in.weight\""), "\(e)")
        }
    }

    func testIntegerTensorsAreNotFloatWeights() throws {
        try put(sampleWriter(), "text_encoder", "model.safetensors")
        let weights = try ComponentWeights(directory: root, component: "text_encoder")
        XCTAssertThrowsError(try weights.weight("position_ids")) { e in
            XCTAssertEqual((e as? WeightsError)?.code, .unsupportedDType)
        }
    }

    func testPrefixAddressesNamesInsideASingleFile() throws {
        var w = SafetensorsWriter()
        w.add("model.diffusion_model.out.2.bias", shape: [1], float32: [9])
        w.add("first_stage_model.post_quant_conv.bias", shape: [1], float32: [8])
        let url = try put(w, "single", "sd15.safetensors")
        let unet = try ComponentWeights(file: url, prefix: "model.diffusion_model.")
        XCTAssertEqual(floats(try unet.weight("out.2.bias")), [9])
        XCTAssertEqual(unet.tensorNames, ["out.2.bias"])
        XCTAssertFalse(unet.has("post_quant_conv.bias"))
        let vae = try ComponentWeights(file: url).scoped("first_stage_model.")
        XCTAssertEqual(floats(try vae.weight("post_quant_conv.bias")), [8])
    }

    func testTextEncoderUsesModelSafetensors() throws {
        try put(sampleWriter(bias: 3), "text_encoder", "model.safetensors")
        let weights = try ComponentWeights(directory: root, component: "text_encoder")
        XCTAssertEqual(weights.url.lastPathComponent, "model.safetensors")
        XCTAssertEqual(floats(try weights.weight("conv.bias")), [3, -3])
    }

    func testPrefersTheNonVariantFileOverFP16() throws {
        try put(sampleWriter(bias: 1), "unet", "diffusion_pytorch_model.safetensors")
        try put(sampleWriter(bias: 2), "unet", "diffusion_pytorch_model.fp16.safetensors")
        let weights = try ComponentWeights(directory: root, component: "unet")
        XCTAssertEqual(floats(try weights.weight("conv.bias")), [1, -1])
    }

    func testFallsBackToTheFP16Variant() throws {
        try put(sampleWriter(bias: 2), "unet", "diffusion_pytorch_model.fp16.safetensors")
        let weights = try ComponentWeights(directory: root, component: "unet")
        XCTAssertEqual(weights.url.lastPathComponent, "diffusion_pytorch_model.fp16.safetensors")
        XCTAssertEqual(floats(try weights.weight("conv.bias")), [2, -2])
    }

    func testReadsShardedWeightsThroughTheIndex() throws {
        var a = SafetensorsWriter()
        a.add("down.weight", shape: [1], float32: [4])
        var b = SafetensorsWriter()
        b.add("up.weight", dtype: .f16, shape: [1], bits16: [0x4400])
        try put(a, "unet", "diffusion_pytorch_model-00001-of-00002.safetensors")
        try put(b, "unet", "diffusion_pytorch_model-00002-of-00002.safetensors")
        let index = """
            {"metadata": {"total_size": 6}, "weight_map": {
             "down.weight": "diffusion_pytorch_model-00001-of-00002.safetensors",
             "up.weight": "diffusion_pytorch_model-00002-of-00002.safetensors"}}
            """
        try Data(index.utf8).write(
            to: root.appendingPathComponent("unet/diffusion_pytorch_model.safetensors.index.json"))
        let weights = try ComponentWeights(directory: root, component: "unet")
        XCTAssertEqual(floats(try weights.weight("down.weight")), [4])
        XCTAssertEqual(floats(try weights.weight("up.weight")), [4])
        XCTAssertEqual(weights.tensorNames, ["down.weight", "up.weight"])
    }

    func testPickleOnlyFolderSaysToConvert() throws {
        let dir = root.appendingPathComponent("unet", isDirectory: true)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        try Data([0x80, 0x02]).write(to: dir.appendingPathComponent("diffusion_pytorch_model.bin"))
        XCTAssertThrowsError(try ComponentWeights(directory: root, component: "unet")) { e in
            XCTAssertEqual((e as? WeightsError)?.code, .unsupportedFormat)
            XCTAssertTrue("\(e)".contains("PyTorch pickle weights are not supported; convert to safetensors"), "\(e)")
            XCTAssertTrue("\(e)".contains("diffusion_pytorch_model.bin"), "\(e)")
        }
    }

    func testEmptyFolderHasNoWeights() throws {
        try FileManager.default.createDirectory(
            at: root.appendingPathComponent("vae"), withIntermediateDirectories: true)
        XCTAssertThrowsError(try ComponentWeights(directory: root, component: "vae")) { e in
            XCTAssertEqual((e as? WeightsError)?.code, .noWeights)
            XCTAssertTrue("\(e)".contains("diffusion_pytorch_model.safetensors"), "\(e)")
        }
    }

    func testMissingComponentFolderIsNamed() throws {
        XCTAssertThrowsError(try ComponentWeights(directory: root, component: "unet")) { e in
            XCTAssertEqual((e as? WeightsError)?.code, .fileNotFound)
            XCTAssertTrue("\(e)".contains(root.appendingPathComponent("unet").path), "\(e)")
        }
    }

    func testCorruptWeightsFileIsAnErrorNamingIt() throws {
        let dir = root.appendingPathComponent("unet", isDirectory: true)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let url = dir.appendingPathComponent("diffusion_pytorch_model.safetensors")
        try Data([1, 2, 3]).write(to: url)
        XCTAssertThrowsError(try ComponentWeights(directory: root, component: "unet")) { e in
            XCTAssertEqual((e as? WeightsError)?.code, .malformed)
            XCTAssertTrue("\(e)".hasPrefix(url.path), "\(e)")
        }
    }

    func testPrefetchAndReleaseKeepWeightsReadable() throws {
        try put(sampleWriter(), "unet", "diffusion_pytorch_model.safetensors")
        let weights = try ComponentWeights(directory: root, component: "unet")
        let w = try weights.weight("conv.weight")
        weights.prefetch(["conv.weight", "absent"])
        weights.release(["conv.weight", "absent"], dropPageCache: true)
        XCTAssertEqual(floats(w), [1, 2, 3, 4])
    }
}
