// Single-file CompVis checkpoints: name maps against diffusers' own conversion (full SD 1.5 / SD 2.1
// layouts), architecture inference, and whole generations against diffusers' from_single_file.

import Foundation
import MMapWeights
import Pipeline
import TiledKernels
import XCTest

/// Writes tiny-sd as a CompVis single file (the layout tools/reference/make_single_file.py checks with
/// diffusers' from_single_file; its names.json pins every name, dtype and shape).
enum TinySingleFile {
    static func write(to url: URL) throws {
        let tiny = ModelFixtures.tinyModel
        let model = try StableDiffusionModel(url: tiny)
        var writer = SafetensorsWriter()
        writer.metadata = ["format": "pt"]
        for component in ["unet", "vae", "text_encoder"] {
            let w = try ComponentWeights(directory: tiny, component: component)
            for name in w.tensorNames {
                guard let info = try w.info(name),
                    let (target, shape) = model.compVisName(component: component, name: name, shape: info.shape)
                else {
                    XCTFail("\(component).\(name) has no CompVis name")
                    continue
                }
                writer.add(target, dtype: info.dtype, shape: shape, bytes: Array(info.rawBytes))
            }
        }
        var ids = [UInt8]()
        for i in 0..<77 { withUnsafeBytes(of: Int64(i).littleEndian) { ids += $0 } }
        writer.add(CompVisNames.clipPrefix + "text_model.embeddings.position_ids", dtype: .i64, shape: [1, 77], bytes: ids)
        writer.add("model_ema.decay", shape: [], float32: [0.9999])
        writer.add("model_ema.num_updates", dtype: .i32, shape: [], bytes: [0xE8, 0x03, 0, 0])
        try writer.write(to: url)
    }
}

final class SingleFileCheckpointTests: XCTestCase {
    var workDir: URL!

    override func setUpWithError() throws {
        workDir = FileManager.default.temporaryDirectory.appendingPathComponent("sdd-single-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: workDir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: workDir)
    }

    func layout(_ name: String) throws -> [String: Any] {
        let url = ModelFixtures.root.appendingPathComponent("single-file/\(name)-layout.json")
        return try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any])
    }

    func shapes(_ object: Any?) throws -> [String: [Int]] {
        try XCTUnwrap(object as? [String: [Int]])
    }

    /// sdd's maps give exactly the diffusers names and shapes diffusers' converters make of a real layout.
    func assertMapsMatchDiffusers(_ name: String) throws -> SingleFileCheckpoint {
        let l = try layout(name)
        let compvis = try shapes(l["compvis"])
        let checkpoint = try SingleFileCheckpoint(shapes: compvis, file: name, prediction: nil)
        let expected = try XCTUnwrap(l["diffusers"] as? [String: Any])
        for component in ["unet", "vae", "text_encoder"] {
            let want = try shapes(expected[component])
            let map = try XCTUnwrap(checkpoint.maps[component])
            XCTAssertEqual(Set(map.keys), Set(want.keys), "\(name) \(component): names differ: "
                + "\(Set(map.keys).symmetricDifference(want.keys).sorted().prefix(6))")
            for (d, entry) in map {
                guard var s = compvis[entry.source], let w = want[d] else { continue }
                if case .rows(_, let n) = entry.part { s[0] /= n }
                XCTAssertEqual(s.filter { $0 != 1 }, w.filter { $0 != 1 }, "\(name) \(component) \(d) from \(entry)")
            }
        }
        return checkpoint
    }

    func config(_ checkpoint: SingleFileCheckpoint, _ component: String) throws -> [String: Any] {
        try XCTUnwrap(JSONSerialization.jsonObject(with: Data(try XCTUnwrap(checkpoint.configs[component]).utf8))
            as? [String: Any])
    }

    func testSD15LayoutMapsAsDiffusersConvertsItAndInfersSD15Config() throws {
        let checkpoint = try assertMapsMatchDiffusers("sd15")
        XCTAssertEqual(checkpoint.family, .sd1)
        XCTAssertEqual(checkpoint.padToken, "<|endoftext|>")
        let unet = try config(checkpoint, "unet")
        XCTAssertEqual(unet["block_out_channels"] as? [Int], [320, 640, 1280, 1280])
        XCTAssertEqual(unet["layers_per_block"] as? Int, 2)
        XCTAssertEqual(unet["attention_head_dim"] as? Int, 8)
        XCTAssertEqual(unet["cross_attention_dim"] as? Int, 768)
        XCTAssertEqual(unet["use_linear_projection"] as? Bool, false)
        XCTAssertEqual(unet["sample_size"] as? Int, 64)
        XCTAssertEqual(unet["down_block_types"] as? [String], ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                                               "CrossAttnDownBlock2D", "DownBlock2D"])
        XCTAssertEqual(unet["up_block_types"] as? [String], ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                                                             "CrossAttnUpBlock2D"])
        let vae = try config(checkpoint, "vae")
        XCTAssertEqual(vae["block_out_channels"] as? [Int], [128, 256, 512, 512])
        XCTAssertEqual(vae["layers_per_block"] as? Int, 2)
        XCTAssertEqual(vae["latent_channels"] as? Int, 4)
        let text = try config(checkpoint, "text_encoder")
        XCTAssertEqual(text["hidden_size"] as? Int, 768)
        XCTAssertEqual(text["num_hidden_layers"] as? Int, 12)
        XCTAssertEqual(text["num_attention_heads"] as? Int, 12)
        XCTAssertEqual(text["intermediate_size"] as? Int, 3072)
        XCTAssertEqual(text["hidden_act"] as? String, "quick_gelu")
        let scheduler = try config(checkpoint, "scheduler")
        XCTAssertEqual(scheduler["_class_name"] as? String, "PNDMScheduler")
        XCTAssertEqual(scheduler["prediction_type"] as? String, "epsilon")
    }

    func testSD21LayoutMapsAsDiffusersConvertsItAndInfersSD21Config() throws {
        let checkpoint = try assertMapsMatchDiffusers("sd21")
        XCTAssertEqual(checkpoint.family, .sd2)
        XCTAssertEqual(checkpoint.padToken, "!")
        let unet = try config(checkpoint, "unet")
        XCTAssertEqual(unet["attention_head_dim"] as? [Int], [5, 10, 20, 20])
        XCTAssertEqual(unet["cross_attention_dim"] as? Int, 1024)
        XCTAssertEqual(unet["use_linear_projection"] as? Bool, true)
        XCTAssertEqual(unet["upcast_attention"] as? Bool, true)
        XCTAssertEqual(unet["sample_size"] as? Int, 96)
        let text = try config(checkpoint, "text_encoder")
        XCTAssertEqual(text["hidden_size"] as? Int, 1024)
        XCTAssertEqual(text["num_hidden_layers"] as? Int, 23, "23 of OpenCLIP's 24 layers, as diffusers converts")
        XCTAssertEqual(text["num_attention_heads"] as? Int, 16)
        XCTAssertEqual(text["intermediate_size"] as? Int, 4096)
        XCTAssertEqual(text["hidden_act"] as? String, "gelu")
        let scheduler = try config(checkpoint, "scheduler")
        XCTAssertEqual(scheduler["_class_name"] as? String, "DDIMScheduler")
        XCTAssertEqual(scheduler["prediction_type"] as? String, "v_prediction")
        let epsilon = try SingleFileCheckpoint(shapes: try shapes(try layout("sd21")["compvis"]), file: "sd21",
                                               prediction: .epsilon)
        XCTAssertEqual(try config(epsilon, "scheduler")["prediction_type"] as? String, "epsilon")
    }

    func testTinySingleFileWrittenHereHasTheLayoutDiffusersChecked() throws {
        let file = workDir.appendingPathComponent("tiny-sd1.safetensors")
        try TinySingleFile.write(to: file)
        let names = try XCTUnwrap(try ModelFixtures.json("single-file-sd1/names.json") as? [String: [Any]])
        let st = try SafetensorsFile(url: file)
        XCTAssertEqual(Set(st.tensorNames), Set(names.keys))
        let dtypes = ["float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64", "int32": "I32"]
        for (name, entry) in names {
            let info = try XCTUnwrap(try st.info(name), name)
            XCTAssertEqual(info.dtype.safetensorsName, dtypes[entry[0] as? String ?? ""], name)
            XCTAssertEqual(info.shape, entry[1] as? [Int], name)
        }
    }

    /// tiny-sd's single file with `--config tiny-sd` generates what diffusers' from_single_file does.
    func testTinySingleFileWithConfigMatchesDiffusersFromSingleFile() throws {
        let file = workDir.appendingPathComponent("tiny-sd1.safetensors")
        try TinySingleFile.write(to: file)
        let ran = try assertPipelineMatchesReference(
            model: file, folder: "single-file-sd1", options: ModelOpenOptions(configDirectory: ModelFixtures.tinyModel))
        XCTAssertEqual(ran, 2)
    }

    /// tiny-sd uses 8 norm groups, which SD 1.x's standard settings (32) cannot have: without --config the
    /// file is refused naming the tensor that does not fit.
    func testNonStandardShapesWithoutConfigNameTheTensor() throws {
        let file = workDir.appendingPathComponent("tiny-sd1.safetensors")
        try TinySingleFile.write(to: file)
        XCTAssertThrowsError(try StableDiffusionModel(url: file)) { error in
            let text = "\(error)"
            XCTAssertTrue(text.contains("model.diffusion_model.input_blocks.1.0.in_layers.2.weight"), text)
            XCTAssertTrue(text.contains("not a multiple of 32 groups"), text)
        }
    }

    func testSDXLStyleUNetTensorIsRefusedByName() throws {
        var s = try shapes(try layout("sd15")["compvis"])
        s["model.diffusion_model.label_emb.0.0.weight"] = [1280, 2816]
        XCTAssertThrowsError(try SingleFileCheckpoint(shapes: s, file: "x.safetensors", prediction: nil)) { error in
            XCTAssertTrue("\(error)".contains("model.diffusion_model.label_emb.0.0.weight"), "\(error)")
        }
    }

    /// Hostile shapes (a scalar where a conv kernel belongs) are errors naming the tensor, never a crash.
    func testScalarWhereAKernelBelongsIsAnErrorNamingIt() throws {
        for name in ["model.diffusion_model.out.2.weight", "model.diffusion_model.input_blocks.1.0.in_layers.2.weight",
                     "first_stage_model.decoder.conv_in.weight", "first_stage_model.encoder.down.0.block.0.conv1.weight",
                     "cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight"] {
            var s = try shapes(try layout("sd15")["compvis"])
            s[name] = []
            XCTAssertThrowsError(try SingleFileCheckpoint(shapes: s, file: "x.safetensors", prediction: nil)) { error in
                XCTAssertTrue("\(error)".contains(name), "\(error)")
            }
        }
    }

    func testPickleCheckpointIsRefusedWithHowToConvert() throws {
        let file = workDir.appendingPathComponent("model.ckpt")
        try Data([0x50, 0x4B, 0x03, 0x04] + [UInt8](repeating: 0, count: 60)).write(to: file)
        XCTAssertThrowsError(try StableDiffusionModel(url: file)) { error in
            let text = "\(error)"
            XCTAssertTrue(text.contains("pickle") && text.contains("safetensors") && text.contains("save_file"), text)
        }
    }

    func testShippedCLIPTableGivesCLIPsIds() throws {
        let tokenizer = try CLIPVocabulary.tokenizer()
        XCTAssertEqual(CLIPVocabulary.tokens.count, 49408)
        // REFERENCE.md: CLIP's ids for this prompt (open_clip and transformers agree).
        XCTAssertEqual(Array(tokenizer.encode("a photograph of an astronaut riding a horse").ids.prefix(11)),
                       [49406, 320, 8853, 539, 550, 18376, 6765, 320, 4558, 49407, 49407])
        let sd2 = try CLIPVocabulary.tokenizer(padToken: "!")
        XCTAssertEqual(sd2.encode("a horse").ids.suffix(2), [0, 0], "SD 2.x pads with \"!\" (id 0)")
        let folder = try CLIPTokenizer(directory: ModelFixtures.tinyModel.appendingPathComponent("tokenizer"))
        for prompt in ["A photo of a cat, 4k!", "naïve café — ünïcödé"] {
            XCTAssertEqual(tokenizer.encode(prompt).ids, folder.encode(prompt).ids, prompt)
        }
    }
}
