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
}
