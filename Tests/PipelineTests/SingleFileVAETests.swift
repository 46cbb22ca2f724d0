// Single-file VAEs (`--vae FILE.safetensors`): CompVis names bare or under first_stage_model. map as diffusers'
// conversion maps them (the real SD 1.5 layout and tools/reference/make_single_file_vae.py's fixtures), the
// tensors are views of the mapped file, and a file that does not fit its config is an error naming the tensor.

import Foundation
import MMapWeights
import Pipeline
import TiledKernels
import XCTest

final class SingleFileVAETests: XCTestCase {
    static let singleFile = ModelFixtures.root.appendingPathComponent("single-file")
    static let bare = singleFile.appendingPathComponent("tiny-vae-kl-compvis.safetensors")
    static let prefixed = singleFile.appendingPathComponent("tiny-vae-kl-first-stage.safetensors")
    static let klFolder = ModelFixtures.root.appendingPathComponent("tiny-vae-kl")

    var workDir: URL!

    override func setUpWithError() throws {
        workDir = FileManager.default.temporaryDirectory.appendingPathComponent("sdd-vae-file-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: workDir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: workDir)
    }

    /// The fixture's tensors (stored name → dtype, shape, bytes), for writing altered copies.
    func fixtureTensors(_ url: URL = bare) throws -> [(name: String, dtype: DType, shape: [Int], bytes: [UInt8])] {
        let file = try SafetensorsFile(url: url)
        return file.allInfos.map { ($0.name, $0.dtype, $0.shape, Array($0.rawBytes)) }
    }

    func write(_ tensors: [(name: String, dtype: DType, shape: [Int], bytes: [UInt8])], _ name: String) throws -> URL {
        var writer = SafetensorsWriter()
        for t in tensors { writer.add(t.name, dtype: t.dtype, shape: t.shape, bytes: t.bytes) }
        let url = workDir.appendingPathComponent(name)
        try writer.write(to: url)
        return url
    }

    func testRealSD15VAENamesMapAsDiffusersConvertsThemAndFitSDsStandardConfig() throws {
        let data = try Data(contentsOf: Self.singleFile.appendingPathComponent("sd15-layout.json"))
        let layout = try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [String: Any])
        let compvis = try XCTUnwrap(layout["compvis"] as? [String: [Int]])
        let diffusers = try XCTUnwrap((layout["diffusers"] as? [String: Any])?["vae"] as? [String: [Int]])
        let configObject = try XCTUnwrap((layout["configs"] as? [String: Any])?["vae"])
        let config = try JSONDecoder().decode(VAEConfig.self, from: JSONSerialization.data(withJSONObject: configObject))
        // The standard config's tensor table is diffusers' AutoencoderKL, shape for shape.
        XCTAssertEqual(config.tensorShapes(encoder: true), diffusers)

        let prefixed = compvis.filter { $0.key.hasPrefix(CompVisNames.vaePrefix) }
        var bare = [String: [Int]]()
        for (k, v) in prefixed { bare[String(k.dropFirst(CompVisNames.vaePrefix.count))] = v }
        bare["loss.logvar"] = []  // a training leftover: not the VAE's, ignored
        for (shapes, prefix) in [(prefixed, CompVisNames.vaePrefix), (bare, "")] {
            let (found, map) = try SingleFileVAE.diffusersNames(shapes: shapes, config: config, file: "sd15",
                                                                 configSource: "SD 1.5")
            XCTAssertEqual(found, prefix)
            XCTAssertEqual(Set(map.keys), Set(diffusers.keys), "diffusers' convert_ldm_vae_checkpoint names")
            XCTAssertEqual(map["decoder.mid_block.attentions.0.to_q.weight"], "decoder.mid.attn_1.q.weight")
            XCTAssertEqual(map["decoder.up_blocks.0.resnets.2.conv1.weight"], "decoder.up.3.block.2.conv1.weight")
            XCTAssertEqual(map["encoder.down_blocks.1.resnets.0.conv_shortcut.weight"],
                           "encoder.down.1.block.0.nin_shortcut.weight")
            XCTAssertEqual(map["post_quant_conv.weight"], "post_quant_conv.weight")
        }
    }

    func testFixtureFilesWithAndWithoutPrefixGiveTheFolderVAEsTensorsAsViewsOfTheFile() throws {
        let model = try StableDiffusionModel(url: ModelFixtures.tinyModel)
        let folder = try ComponentWeights(directory: Self.klFolder, component: "")
        for url in [Self.bare, Self.prefixed] {
            let swapped = try model.replacingVAE(with: url, config: Self.klFolder)
            XCTAssertEqual(swapped.vae.scalingFactor, 0.13025)
            XCTAssertEqual(swapped.vae.blockOutChannels, [8, 8, 16, 16])
            XCTAssertEqual(swapped.vaeURL, url)
            let weights = try swapped.weights("vae")
            for name in folder.tensorNames {
                let expected = try folder.weight(name)
                let got = try weights.weight(name, shape: expected.shape)
                XCTAssertEqual(got.type, .f16, name)
                XCTAssertTrue(got.owner is MappedFile, "\(name) must be a view of the mapped file")
                XCTAssertEqual(Array(got.bytes), Array(expected.bytes), name)
            }
        }
    }

    func testWithoutVAEConfigTheModelsOwnVAEConfigIsUsed() throws {
        // tiny-sd's own VAE written as a bare CompVis file: no --vae-config needed, and it decodes as the folder.
        let model = try StableDiffusionModel(url: ModelFixtures.tinyModel)
        let own = try ComponentWeights(directory: ModelFixtures.tinyModel, component: "vae")
        var tensors: [(name: String, dtype: DType, shape: [Int], bytes: [UInt8])] = []
        for name in own.tensorNames {
            let info = try XCTUnwrap(try own.info(name))
            let (target, shape) = try XCTUnwrap(model.compVisName(component: "vae", name: name, shape: info.shape))
            tensors.append((String(target.dropFirst(CompVisNames.vaePrefix.count)), info.dtype, shape, Array(info.rawBytes)))
        }
        XCTAssertTrue(tensors.contains { $0.name == "decoder.mid.attn_1.q.weight" && $0.shape.count == 4 })
        let swapped = try model.replacingVAE(with: try write(tensors, "own-vae.safetensors"))
        XCTAssertEqual(swapped.vae.scalingFactor, model.vae.scalingFactor)
        XCTAssertEqual(swapped.vae.blockOutChannels, model.vae.blockOutChannels)
        let config = try JSONDecoder().decode(VAEConfig.self, from: Data(try XCTUnwrap(swapped.vaeConfigText).utf8))
        XCTAssertEqual(config.normNumGroups, model.vae.normNumGroups)
        XCTAssertEqual(config.scalingFactor, model.vae.scalingFactor)

        let z = Tensor(shape: [1, 4, 3, 5], data: (0..<60).map { Float(sin(Double($0) * 0.7)) })
        let a = try VAEDecoder(config: model.vae, weights: try model.weights("vae"))(z)
        let b = try VAEDecoder(config: swapped.vae, weights: try swapped.weights("vae"))(z)
        XCTAssertEqual(a.data, b.data, "same weights, same code, same process: the same image")
    }

    func testAFileThatDoesNotFitTheModelsVAEConfigNamesTheFirstTensorAndVAEConfig() throws {
        let model = try StableDiffusionModel(url: ModelFixtures.tinyModel)
        XCTAssertThrowsError(try model.replacingVAE(with: Self.bare)) { error in
            let text = "\(error)"
            XCTAssertTrue(text.contains("\"decoder.conv_in.bias\" has shape [16], expected [32]"), text)
            XCTAssertTrue(text.contains("--vae-config"), text)
        }
        XCTAssertThrowsError(try model.replacingVAE(with: Self.prefixed)) { error in
            XCTAssertTrue("\(error)".contains("\"first_stage_model.decoder.conv_in.bias\""), "\(error)")
        }
    }

    func testMissingExtraAndUnknownTensorsAreErrorsNamingThem() throws {
        let model = try StableDiffusionModel(url: ModelFixtures.tinyModel)
        let tensors = try fixtureTensors()
        let missing = try write(tensors.filter { $0.name != "decoder.up.0.block.1.conv2.weight" }, "missing.safetensors")
        XCTAssertThrowsError(try model.replacingVAE(with: missing, config: Self.klFolder)) { error in
            XCTAssertTrue("\(error)".contains("no tensor \"decoder.up.0.block.1.conv2.weight\""), "\(error)")
        }
        let conv = try XCTUnwrap(tensors.first { $0.name == "decoder.up.0.block.1.conv2.weight" })
        let extra = try write(tensors + [("decoder.up.0.block.3.conv2.weight", conv.dtype, conv.shape, conv.bytes)],
                              "extra.safetensors")
        XCTAssertThrowsError(try model.replacingVAE(with: extra, config: Self.klFolder)) { error in
            XCTAssertTrue("\(error)".contains("\"decoder.up.0.block.3.conv2.weight\" has no place"), "\(error)")
        }
        let unknown = try write(tensors + [("decoder.mid.attn_2.q.weight", conv.dtype, conv.shape, conv.bytes)],
                                "unknown.safetensors")
        XCTAssertThrowsError(try model.replacingVAE(with: unknown, config: Self.klFolder)) { error in
            XCTAssertTrue("\(error)".contains("\"decoder.mid.attn_2.q.weight\" is not a tensor of"), "\(error)")
        }
        let noDecoder = try write(tensors.filter { !$0.name.hasPrefix("decoder.") }, "encoder-only.safetensors")
        XCTAssertThrowsError(try model.replacingVAE(with: noDecoder, config: Self.klFolder)) { error in
            XCTAssertTrue("\(error)".contains("holds no VAE decoder"), "\(error)")
        }
        // A decoder-only file (no encoder, no quant_conv) is enough for generating.
        let decoderOnly = try write(tensors.filter { !$0.name.hasPrefix("encoder.") && !$0.name.hasPrefix("quant_conv.") },
                                    "decoder-only.safetensors")
        XCTAssertNoThrow(try model.replacingVAE(with: decoderOnly, config: Self.klFolder))
    }

    func testPickleOtherFilesAndVAEConfigForAFolderAreRefused() throws {
        let model = try StableDiffusionModel(url: ModelFixtures.tinyModel)
        let ckpt = workDir.appendingPathComponent("vae-ft-mse-840000-ema-pruned.ckpt")
        try Data([0x80, 0x02]).write(to: ckpt)
        XCTAssertThrowsError(try model.replacingVAE(with: ckpt)) { error in
            XCTAssertTrue("\(error)".contains("pickle") && "\(error)".contains("safetensors"), "\(error)")
        }
        let gguf = workDir.appendingPathComponent("vae.gguf")
        try Data("GGUF".utf8).write(to: gguf)
        XCTAssertThrowsError(try model.replacingVAE(with: gguf)) { error in
            XCTAssertTrue("\(error)".contains("not .safetensors"), "\(error)")
        }
        XCTAssertThrowsError(try model.replacingVAE(with: Self.klFolder, config: Self.klFolder)) { error in
            XCTAssertTrue("\(error)".contains("only for a single-file VAE"), "\(error)")
        }
        let taesd = ModelFixtures.root.appendingPathComponent("tiny-taesd")
        XCTAssertThrowsError(try model.replacingVAE(with: Self.bare, config: taesd)) { error in
            XCTAssertTrue("\(error)".contains("AutoencoderTiny"), "\(error)")
        }
    }
}
