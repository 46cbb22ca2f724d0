// GGUF models: `sdd convert`'s file runs like the diffusers folder it came from (F32 identically, Q8_0
// closely), keeps shapes and the quantization policy, serves zero-copy typed weights, and fails clearly.

import Foundation
import MMapWeights
import Pipeline
import TiledKernels
import XCTest

final class GGUFModelTests: XCTestCase {
    var dir: URL!

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("sdd-gguf-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: dir)
    }

    func convert(_ type: TensorType, vae: TensorType? = nil) throws -> URL {
        let url = dir.appendingPathComponent("tiny-\(type.name).gguf")
        try ModelConverter.convert(diffusersFolder: ModelFixtures.tinyModel, to: url,
                                   options: ConversionOptions(type: type, vaeType: vae))
        return url
    }

    func settings() -> GenerationSettings {
        var s = GenerationSettings(prompt: "a photograph of an astronaut riding a horse")
        s.negativePrompt = "blurry"
        s.steps = 4
        s.seed = 1234
        s.guidance = 7.5
        return s
    }

    func generate(_ url: URL) throws -> GenerationResult {
        try StableDiffusionPipeline(model: try StableDiffusionModel(url: url)).generate(settings())
    }

    func testF32GGUFGeneratesTheSameLatentsAsTheDiffusersFolder() throws {
        let folder = try generate(ModelFixtures.tinyModel)
        let gguf = try generate(try convert(.f32))
        let err = relativeMaxError(gguf.latents, folder.latents)
        print("gguf f32 vs folder: final latents relative error \(err)")
        XCTAssertLessThanOrEqual(err, 1e-6)
        XCTAssertEqual(gguf.images, folder.images)
    }

    func testQ8_0GGUFStaysCloseToTheF32Result() throws {
        let folder = try generate(ModelFixtures.tinyModel)
        let q8 = try generate(try convert(.q8_0))
        let err = relativeMaxError(q8.latents, folder.latents)
        let db = psnr(q8.images.flatMap { $0 }, folder.images.flatMap { $0 })
        print("gguf q8_0 vs f32 folder: final latents relative error \(err), image PSNR \(String(format: "%.1f", db)) dB")
        XCTAssertLessThanOrEqual(err, 0.02)
        XCTAssertGreaterThanOrEqual(db, 35)
    }

    func testBF16ProductsStayCloseToTheF32Products() throws {
        try XCTSkipUnless(ProductPrecision.bf16Available, "this CPU has no AVX512_BF16")
        let url = try convert(.q8_0)
        let f32 = try StableDiffusionPipeline(model: try StableDiffusionModel(url: url), products: .f32)
            .generate(settings())
        let bf16 = try StableDiffusionPipeline(model: try StableDiffusionModel(url: url), products: .bf16)
            .generate(settings())
        let err = relativeMaxError(bf16.latents, f32.latents)
        let db = psnr(bf16.images.flatMap { $0 }, f32.images.flatMap { $0 })
        print("q8_0 bf16 vs f32 products: final latents relative error \(err), image PSNR \(String(format: "%.1f", db)) dB")
        XCTAssertGreaterThan(err, 0, "BF16 products ran nowhere")
        XCTAssertLessThanOrEqual(err, 0.05)
        XCTAssertGreaterThanOrEqual(db, 30)
    }

    func testAutomaticProductsAreBF16OnlyForQuantizedModels() throws {
        let folder = try StableDiffusionPipeline(model: try StableDiffusionModel(url: ModelFixtures.tinyModel))
        XCTAssertEqual(folder.products, .f32)
        let f16 = try StableDiffusionPipeline(model: try StableDiffusionModel(url: try convert(.f16)))
        XCTAssertEqual(f16.products, .f32)
        let q8 = try StableDiffusionPipeline(model: try StableDiffusionModel(url: try convert(.q8_0)))
        XCTAssertEqual(q8.products, ProductPrecision.bf16Available ? .bf16 : .f32)
    }

    func testPrecisionNamesAreCheckedByName() throws {
        XCTAssertEqual(try ProductPrecision.named("F32"), .f32)
        XCTAssertNil(try ProductPrecision.named("auto"))
        XCTAssertThrowsError(try ProductPrecision.named("fp8")) { error in
            XCTAssertTrue("\(error)".contains("unknown precision fp8"), "\(error)")
        }
        if ProductPrecision.bf16Available { XCTAssertEqual(try ProductPrecision.named("bf16"), .bf16) }
    }

    func testEveryQuantizedTypeConvertsOpensAndGenerates() throws {
        let reference = try generate(ModelFixtures.tinyModel)
        for type in [TensorType.q4_0, .q4_1, .q5_0, .q5_1, .f16, .bf16] {
            let result = try generate(try convert(type))
            let err = relativeMaxError(result.latents, reference.latents)
            print("gguf \(type.name): final latents relative error \(err)")
            XCTAssertLessThanOrEqual(err, 0.25, type.name)
            XCTAssertTrue(result.latents.data.allSatisfy(\.isFinite), type.name)
        }
    }

    func testQuantizationPolicyKeepsNormsBiasesAndSmallTensorsF32AndTheVAEF16() throws {
        let gguf = try GGUFFile(url: try convert(.q8_0))
        func type(_ name: String) throws -> TensorType { try XCTUnwrap(gguf.tensor(name), name).type }
        XCTAssertEqual(try type("unet.conv_norm_out.weight"), .f32)
        XCTAssertEqual(try type("unet.down_blocks.0.resnets.0.conv1.bias"), .f32)
        XCTAssertEqual(try type("text_encoder.text_model.embeddings.position_embedding.weight"), .f32)
        XCTAssertEqual(try type("unet.down_blocks.0.resnets.0.time_emb_proj.weight"), .q8_0)  // [16, 64]
        XCTAssertEqual(try type("unet.down_blocks.0.resnets.0.conv1.weight"), .f16, "rows of 144 are not whole blocks")
        XCTAssertEqual(try type("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"), .f32,
                       "256 elements: small")
        XCTAssertTrue(gguf.tensors.filter { $0.name.hasPrefix("vae.") }.allSatisfy { $0.type == .f16 || $0.type == .f32 })
        // A quantized conv kernel is stored 2-D and handed out with its PyTorch shape.
        let conv = try XCTUnwrap(gguf.tensors.first { $0.type == .q8_0 && $0.name.hasPrefix("unet.") && $0.name.hasSuffix("conv1.weight") })
        XCTAssertEqual(conv.shape.count, 2)
        let model = try StableDiffusionModel(gguf: gguf)
        let unet = try XCTUnwrap(try model.weights("unet") as? GGUFComponentWeights)
        let name = String(conv.name.dropFirst(5))
        let shape = try XCTUnwrap(unet.shape(of: name))
        XCTAssertEqual(shape.count, 4)
        XCTAssertEqual(try unet.weight(name, shape: shape).shape, shape)
        XCTAssertEqual(gguf.value(SDDGGUFKey.formatVersion), .uint32(1))
        XCTAssertEqual(gguf.value(SDDGGUFKey.architecture), .string("stable-diffusion"))
        XCTAssertEqual(gguf.value(SDDGGUFKey.fileType), .uint32(7))
    }

    func testVAETypeCanBeKeptAsTheMainType() throws {
        let gguf = try GGUFFile(url: try convert(.q8_0, vae: .q8_0))
        XCTAssertTrue(gguf.tensors.contains { $0.name.hasPrefix("vae.") && $0.type == .q8_0 })
    }

    func testProviderServesZeroCopyTypedWeightsOverTheMapping() throws {
        let gguf = try GGUFFile(url: try convert(.q8_0))
        let typed = GGUFComponentWeights(gguf: gguf, prefix: "unet.", convertsToF32: false)
        let converted = GGUFComponentWeights(gguf: gguf, prefix: "unet.", convertsToF32: true)
        let name = "down_blocks.0.resnets.0.time_emb_proj.weight"
        let w = try typed.weight(name, shape: [16, 64])
        XCTAssertEqual(w.type, .q8_0)
        XCTAssertTrue(w.owner === gguf.file, "owner is the mapping")
        let info = try XCTUnwrap(typed.info(name))
        XCTAssertEqual(w.bytes.baseAddress, gguf.file.bytes.baseAddress! + info.byteRange.lowerBound, "no copy")
        let f = try converted.weight(name, shape: [16, 64])
        XCTAssertEqual(f.type, .f32)
        XCTAssertEqual(w.dequantized(), Array(f.values))
        // F32 tensors are zero-copy either way.
        let bias = try converted.weight("conv_in.bias", shape: nil)
        XCTAssertTrue(bias.owner === gguf.file)
        XCTAssertThrowsError(try typed.weight(name, shape: [64, 16])) { XCTAssertTrue("\($0)".contains(name)) }
        XCTAssertThrowsError(try typed.weight("nope", shape: nil)) { XCTAssertTrue("\($0)".contains("unet.nope")) }
    }

    func testTokenizerFromMetadataGivesTheFolderTokenizersIds() throws {
        let gguf = try StableDiffusionModel(url: try convert(.f16))
        let folder = try StableDiffusionModel(url: ModelFixtures.tinyModel)
        for prompt in ["a photograph of an astronaut riding a horse", "<|endoftext|> ÜBER naïve 123 !!", ""] {
            XCTAssertEqual(gguf.tokenizer.encode(prompt), folder.tokenizer.encode(prompt), prompt)
        }
        XCTAssertEqual(gguf.pipelineClass, folder.pipelineClass)
        XCTAssertEqual(gguf.name, "tiny-f16")
    }

    func testInspectListsComponentsTypesAndThePlannedPeak() throws {
        let url = try convert(.q8_0)
        let report = try ModelInspection(url: url).report()
        for fragment in ["unet:", "vae:", "text_encoder:", "q8_0", "f16", "memory (estimate", "planned peak",
                         "general.architecture = \"stable-diffusion\"", "largest"] {
            XCTAssertTrue(report.contains(fragment), "missing \(fragment) in\n\(report)")
        }
        let folderReport = try ModelInspection(url: ModelFixtures.tinyModel).report()
        XCTAssertTrue(folderReport.contains("diffusers folder") && folderReport.contains("unet:") && folderReport.contains("F32"),
                      folderReport)
    }

    func testATruncatedGGUFFailsWithAnErrorNamingTheFile() throws {
        let url = try convert(.q8_0)
        let bytes = try Data(contentsOf: url)
        for length in [bytes.count / 2, 100, 30] {
            let cut = dir.appendingPathComponent("cut-\(length).gguf")
            try bytes.prefix(length).write(to: cut)
            XCTAssertThrowsError(try StableDiffusionModel(url: cut)) { e in
                XCTAssertTrue("\(e)".contains(cut.path), "\(e)")
            }
        }
    }

    func testAMissingOrBadConfigKeyIsNamed() throws {
        let source = try GGUFFile(url: try convert(.f32))
        for (dropped, replaced) in [(SDDGGUFKey.unetConfig, nil), (SDDGGUFKey.tokenizerVocab, nil),
                                    (nil, (SDDGGUFKey.vaeConfig, "{\"block_out_channels\": \"x\"}")),
                                    (nil, (SDDGGUFKey.formatVersion, "2"))] as [(String?, (String, String)?)] {
            var w = GGUFWriter()
            for (k, v) in source.metadata where k != dropped {
                if let (rk, rv) = replaced, rk == k {
                    w.set(k, rk == SDDGGUFKey.formatVersion ? .uint32(2) : .string(rv))
                } else {
                    w.set(k, v)
                }
            }
            let url = dir.appendingPathComponent("bad.gguf")
            try w.write(to: url)
            let key = dropped ?? replaced!.0
            XCTAssertThrowsError(try StableDiffusionModel(url: url)) { e in
                XCTAssertTrue("\(e)".contains(url.path), "\(e)")
                XCTAssertTrue("\(e)".contains(key) || "\(e)".contains("format version"), "\(key): \(e)")
            }
        }
    }

    func testANonGGUFSingleFileIsRefusedByName() throws {
        let url = dir.appendingPathComponent("model.safetensors")
        try Data("not a model".utf8).write(to: url)
        XCTAssertThrowsError(try StableDiffusionModel(url: url)) { XCTAssertTrue("\($0)".contains(url.path)) }
    }

}
