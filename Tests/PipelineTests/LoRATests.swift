// LoRA: whole-pipeline parity with diffusers' load_lora_weights + set_adapters (fixtures from
// tools/reference/make_lora_fixtures.py), the side path against a merge, and errors that name the key at fault.

import Foundation
import MMapWeights
import Pipeline
import TiledKernels
import XCTest

final class LoRATests: XCTestCase {
    static let loraDir = ModelFixtures.root.appendingPathComponent("lora")
    static func lora(_ name: String, _ scale: Float = 1) -> LoRASpec {
        LoRASpec(path: loraDir.appendingPathComponent(name).path, scale: scale)
    }

    // MARK: parity with diffusers (latents 1e-3 relative, images ≥ 45 dB: the bounds of PipelineReference.swift)

    func testAKohyaLoRAOnUNetAndTextEncoderMatchesDiffusers() throws {
        try assertPipelineMatchesReference(model: ModelFixtures.tinyModel, folder: "lora/kohya_pndm",
                                           loras: [Self.lora("kohya_unet_te.safetensors")])
    }

    func testADiffusersFormatLoRAAtScale0_6WithEulerAncestralAndGuidanceMatchesDiffusers() throws {
        try assertPipelineMatchesReference(model: ModelFixtures.tinyModel, folder: "lora/peft_euler_a_0.6",
                                           loras: [Self.lora("peft_unet_te.safetensors", 0.6)])
    }

    func testTwoLoRAsAtOnceMatchDiffusers() throws {
        try assertPipelineMatchesReference(
            model: ModelFixtures.tinyModel, folder: "lora/two_loras_euler",
            loras: [Self.lora("kohya_unet_te.safetensors", 0.8), Self.lora("old_diffusers.safetensors", 0.5)])
    }

    // MARK: behaviour

    func testLoRAsChangeTheImageAndRemovingThemRestoresTheModel() throws {
        let pipeline = try StableDiffusionPipeline(model: try StableDiffusionModel(url: ModelFixtures.tinyModel))
        var s = GenerationSettings(prompt: "a red circle")
        s.steps = 2
        s.seed = 5
        let plain = try pipeline.generate(s).latents
        try pipeline.setLoRAs([Self.lora("peft_unet_te.safetensors", 0.6)])
        XCTAssertEqual(pipeline.loras?.moduleCount("unet"), 185)
        XCTAssertEqual(pipeline.loras?.moduleCount("text_encoder"), 10)
        let adapted = try pipeline.generate(s).latents
        XCTAssertGreaterThan(relativeMaxError(adapted, plain), 0.05, "the LoRA must move the result")
        try pipeline.setLoRAs([])
        XCTAssertEqual(try pipeline.generate(s).latents.data, plain.data)
    }

    func testMergingAtBindTimeGivesTheSidePathsResultToRounding() throws {
        let pipeline = try StableDiffusionPipeline(model: try StableDiffusionModel(url: ModelFixtures.tinyModel))
        var s = GenerationSettings(prompt: "a castle")
        s.steps = 3
        s.seed = 11
        let loras = [Self.lora("kohya_unet_te.safetensors", 0.8), Self.lora("old_diffusers.safetensors", 0.5)]
        try pipeline.setLoRAs(loras, application: .side)
        let side = try pipeline.generate(s).latents
        try pipeline.setLoRAs(loras, application: .merge)
        let merged = try pipeline.generate(s).latents
        // The UNet is F32 and the text encoder BF16: merging re-rounds the text encoder's adapted weights to BF16
        // (2^-8 relative), the rest differs by F32 summation order only.
        XCTAssertLessThanOrEqual(relativeMaxError(merged, side), 2e-2)
        XCTAssertGreaterThan(relativeMaxError(merged, side), 0, "merge must be a different computation")
    }

    func testTheMemoryPlanCountsMergedWeightsAsResident() throws {
        let pipeline = try StableDiffusionPipeline(model: try StableDiffusionModel(url: ModelFixtures.tinyModel))
        let loras = [Self.lora("kohya_unet_te.safetensors")]
        try pipeline.setLoRAs(loras, application: .side)
        let side = try MemoryPlanner.plan(budget: nil, pipeline: pipeline, width: 64, height: 64)
        try pipeline.setLoRAs(loras, application: .merge)
        let merge = try MemoryPlanner.plan(budget: nil, pipeline: pipeline, width: 64, height: 64)
        // 239 adapted UNet layers of 629,732 parameters, F32 here: their merged copies (most of the UNet's 2.5 MB)
        // are resident on top of one streamed group, which the side path's plan holds alone.
        XCTAssertGreaterThan(merge.unetWeights - side.unetWeights, 1_000_000)
    }

    func testASpecParsesPathAndOptionalScale() throws {
        XCTAssertEqual(try LoRASpec.parse("a/b.safetensors"), LoRASpec(path: "a/b.safetensors", scale: 1))
        XCTAssertEqual(try LoRASpec.parse("a/b.safetensors:0.6"), LoRASpec(path: "a/b.safetensors", scale: 0.6))
        XCTAssertEqual(try LoRASpec.parse("c:/x:y.safetensors"), LoRASpec(path: "c:/x:y.safetensors", scale: 1))
        XCTAssertThrowsError(try LoRASpec.parse(":0.5"))
    }

    func testPromptTagsAreRemovedAndResolvedInTheLoRADirectory() throws {
        let (prompt, tags) = try PromptLoRAs.extract("a cat <lora:peft_unet_te:0.6>, photo<lora:kohya_unet_te>")
        XCTAssertEqual(prompt, "a cat , photo")
        XCTAssertEqual(tags.map(\.name), ["peft_unet_te", "kohya_unet_te"])
        XCTAssertEqual(tags.map(\.scale), [0.6, 1])
        XCTAssertEqual(try PromptLoRAs.resolve("peft_unet_te", in: Self.loraDir).lastPathComponent,
                       "peft_unet_te.safetensors")
        for bad in ["../lora/peft_unet_te", "/etc/passwd", ".hidden", "sub/x"] {
            XCTAssertThrowsError(try PromptLoRAs.resolve(bad, in: Self.loraDir)) {
                XCTAssertTrue("\($0)".contains("plain file name"), "\($0)")
            }
        }
        XCTAssertThrowsError(try PromptLoRAs.resolve("missing", in: Self.loraDir)) {
            XCTAssertTrue("\($0)".contains("missing.safetensors"), "\($0)")
        }
        XCTAssertThrowsError(try PromptLoRAs.resolve("x", in: nil)) { XCTAssertTrue("\($0)".contains("--lora-dir")) }
        XCTAssertThrowsError(try PromptLoRAs.extract("<lora:a:b:c>"))
        XCTAssertThrowsError(try PromptLoRAs.extract("<lora:a:strong>"))
    }

    // MARK: errors name the key at fault

    private func write(_ tensors: [(String, [Int], [Float])]) throws -> LoRASpec {
        var w = SafetensorsWriter()
        for (name, shape, values) in tensors { w.add(name, shape: shape, float32: values) }
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("lora-\(UUID().uuidString).safetensors")
        try w.write(to: url)
        addTeardownBlock { try? FileManager.default.removeItem(at: url) }
        return LoRASpec(path: url.path)
    }

    private func assertRefused(_ spec: LoRASpec, mentioning parts: [String], file: StaticString = #filePath,
                               line: UInt = #line) throws {
        let pipeline = try StableDiffusionPipeline(model: try StableDiffusionModel(url: ModelFixtures.tinyModel))
        XCTAssertThrowsError(try pipeline.setLoRAs([spec]), file: file, line: line) { error in
            XCTAssertTrue(error is LoRAError, "\(error)", file: file, line: line)
            for p in parts { XCTAssertTrue("\(error)".contains(p), "\(error) should mention \(p)", file: file, line: line) }
        }
        XCTAssertNil(pipeline.loras, "a refused LoRA leaves the pipeline as it was", file: file, line: line)
    }

    func testAShapeThatDoesNotFitTheModelNamesTheKey() throws {
        // to_q of the first down block is [16, 16]; an A with 20 inputs cannot fit.
        let m = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
        try assertRefused(try write([("\(m).lora_A.weight", [2, 20], Array(repeating: 0.1, count: 40)),
                                     ("\(m).lora_B.weight", [16, 2], Array(repeating: 0.1, count: 32))]),
                          mentioning: ["\(m).lora_A.weight", "[2, 20]", "[16, 16]"])
    }

    func testALayerTheModelLacksNamesTheKey() throws {
        let k = "lora_unet_down_blocks_7_attentions_0_proj_in"
        try assertRefused(try write([("\(k).lora_down.weight", [2, 16, 1, 1], Array(repeating: 0.1, count: 32)),
                                     ("\(k).lora_up.weight", [16, 2, 1, 1], Array(repeating: 0.1, count: 32))]),
                          mentioning: ["\(k).lora_down.weight", "has no layer"])
    }

    func testUnknownKeysAreListedNotDropped() throws {
        let m = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
        try assertRefused(try write([("\(m).lora_A.weight", [2, 16], Array(repeating: 0.1, count: 32)),
                                     ("\(m).lora_B.weight", [16, 2], Array(repeating: 0.1, count: 32)),
                                     ("\(m).hada_w1_a", [2, 16], Array(repeating: 0.1, count: 32)),
                                     ("lora_unet_x.dora_scale", [1], [1])]),
                          mentioning: ["2 key(s)", "\(m).hada_w1_a", "lora_unet_x.dora_scale"])
    }

    func testAModuleWithoutItsUpTensorIsRefused() throws {
        let k = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
        try assertRefused(try write([("\(k).lora_down.weight", [2, 32], Array(repeating: 0.1, count: 64))]),
                          mentioning: ["\(k).lora_down.weight", "no B (up)"])
    }

    // MARK: kohya's SGM/CompVis names

    /// The tiny model's blocks in CompVis' numbering, written out by hand (4 levels, 2 ResNets each, no attention
    /// at the deepest down level and the first up level): what kohya writes as lora_unet_input_blocks_… .
    static let compVisBlocks: [(String, String)] = [
        ("down_blocks_0_resnets_0", "input_blocks_1_0"), ("down_blocks_0_attentions_0", "input_blocks_1_1"),
        ("down_blocks_0_resnets_1", "input_blocks_2_0"), ("down_blocks_0_attentions_1", "input_blocks_2_1"),
        ("down_blocks_0_downsamplers_0_conv", "input_blocks_3_0_op"),
        ("down_blocks_1_resnets_0", "input_blocks_4_0"), ("down_blocks_1_attentions_0", "input_blocks_4_1"),
        ("down_blocks_1_resnets_1", "input_blocks_5_0"), ("down_blocks_1_attentions_1", "input_blocks_5_1"),
        ("down_blocks_1_downsamplers_0_conv", "input_blocks_6_0_op"),
        ("down_blocks_2_resnets_0", "input_blocks_7_0"), ("down_blocks_2_attentions_0", "input_blocks_7_1"),
        ("down_blocks_2_resnets_1", "input_blocks_8_0"), ("down_blocks_2_attentions_1", "input_blocks_8_1"),
        ("down_blocks_2_downsamplers_0_conv", "input_blocks_9_0_op"),
        ("down_blocks_3_resnets_0", "input_blocks_10_0"), ("down_blocks_3_resnets_1", "input_blocks_11_0"),
        ("mid_block_resnets_0", "middle_block_0"), ("mid_block_attentions_0", "middle_block_1"),
        ("mid_block_resnets_1", "middle_block_2"),
        ("up_blocks_0_resnets_0", "output_blocks_0_0"), ("up_blocks_0_resnets_1", "output_blocks_1_0"),
        ("up_blocks_0_resnets_2", "output_blocks_2_0"), ("up_blocks_0_upsamplers_0_conv", "output_blocks_2_1_conv"),
        ("up_blocks_1_resnets_0", "output_blocks_3_0"), ("up_blocks_1_attentions_0", "output_blocks_3_1"),
        ("up_blocks_1_resnets_1", "output_blocks_4_0"), ("up_blocks_1_attentions_1", "output_blocks_4_1"),
        ("up_blocks_1_resnets_2", "output_blocks_5_0"), ("up_blocks_1_attentions_2", "output_blocks_5_1"),
        ("up_blocks_1_upsamplers_0_conv", "output_blocks_5_2_conv"),
        ("up_blocks_2_resnets_0", "output_blocks_6_0"), ("up_blocks_2_attentions_0", "output_blocks_6_1"),
        ("up_blocks_2_resnets_1", "output_blocks_7_0"), ("up_blocks_2_attentions_1", "output_blocks_7_1"),
        ("up_blocks_2_resnets_2", "output_blocks_8_0"), ("up_blocks_2_attentions_2", "output_blocks_8_1"),
        ("up_blocks_2_upsamplers_0_conv", "output_blocks_8_2_conv"),
        ("up_blocks_3_resnets_0", "output_blocks_9_0"), ("up_blocks_3_attentions_0", "output_blocks_9_1"),
        ("up_blocks_3_resnets_1", "output_blocks_10_0"), ("up_blocks_3_attentions_1", "output_blocks_10_1"),
        ("up_blocks_3_resnets_2", "output_blocks_11_0"), ("up_blocks_3_attentions_2", "output_blocks_11_1"),
    ]

    func testKohyaFilesWithCompVisBlockNamesApplyToTheSameLayers() throws {
        let source = try SafetensorsFile(url: Self.loraDir.appendingPathComponent("kohya_unet_te.safetensors"))
        var writer = SafetensorsWriter()
        var renamed = 0
        for info in source.allInfos {
            var name = info.name
            if name.hasPrefix("lora_unet_") {
                let flat = String(name.dropFirst("lora_unet_".count))
                if let (d, c) = Self.compVisBlocks.first(where: { flat.hasPrefix($0.0 + "_") || flat.hasPrefix($0.0 + ".") }) {
                    var rest = String(flat.dropFirst(d.count))
                    if d.contains("resnets") {
                        for (a, b) in [("_conv1", "_in_layers_2"), ("_time_emb_proj", "_emb_layers_1"),
                                       ("_conv_shortcut", "_skip_connection")] where rest.hasPrefix(a + ".") {
                            rest = b + rest.dropFirst(a.count)
                        }
                    }
                    name = "lora_unet_" + c + rest
                    renamed += 1
                }
            }
            writer.add(name, dtype: info.dtype, shape: info.shape, bytes: Array(info.rawBytes))
        }
        XCTAssertGreaterThan(renamed, 100)
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("sgm-\(UUID().uuidString).safetensors")
        try writer.write(to: url)
        addTeardownBlock { try? FileManager.default.removeItem(at: url) }

        let pipeline = try StableDiffusionPipeline(model: try StableDiffusionModel(url: ModelFixtures.tinyModel))
        var s = GenerationSettings(prompt: "a lighthouse")
        s.steps = 2
        s.seed = 3
        try pipeline.setLoRAs([Self.lora("kohya_unet_te.safetensors", 0.7)])
        let diffusersNames = try pipeline.generate(s).latents
        try pipeline.setLoRAs([LoRASpec(path: url.path, scale: 0.7)])
        XCTAssertEqual(pipeline.loras?.moduleCount("unet"), 239)
        XCTAssertEqual(try pipeline.generate(s).latents.data, diffusersNames.data)
    }
}
