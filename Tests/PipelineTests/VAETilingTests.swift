// Tiled VAE decode against diffusers 0.42.1's AutoencoderKL.tiled_decode on the committed tiny VAE
// (fixture: tools/reference/make_vae_tiling_fixture.py), plus cancellation and the memory estimate.

import Foundation
import MMapWeights
import Pipeline
import TiledKernels
import XCTest

final class VAETilingTests: XCTestCase {
    /// Relative max error (max |sdd − diffusers| / max |diffusers|) allowed against the tiled fixture.
    let tolerance: Float = 1e-4

    private func tinyVAE() throws -> VAEDecoder {
        let model = try StableDiffusionModel(url: ModelFixtures.tinyModel)
        return try VAEDecoder(config: model.vae, weights: try ComponentWeights(directory: model.url, component: "vae"))
    }

    /// The fixture case `name`: its tensors and its diffusers tile settings.
    private func fixtureCase(_ name: String) throws -> (z: Tensor, tiled: Tensor, untiled: Tensor?, tiling: VAETiling,
                                                       meta: [String: Any]) {
        let cases = try XCTUnwrap(ModelFixtures.json("vae_tiled.json")["cases"] as? [[String: Any]])
        let meta = try XCTUnwrap(cases.first { $0["name"] as? String == name })
        let tiling = VAETiling(tileLatentSize: try XCTUnwrap(meta["tile_latent_min_size"] as? Int),
                               tileSampleSize: try XCTUnwrap(meta["tile_sample_min_size"] as? Int),
                               overlapFactor: try XCTUnwrap(meta["tile_overlap_factor"] as? Double))
        let t = try ModelFixtures.tensors("vae_tiled.safetensors")
        return (try XCTUnwrap(t["\(name).z"]), try XCTUnwrap(t["\(name).tiled"]), t["\(name).untiled"], tiling, meta)
    }

    private func checkMatchesDiffusers(_ name: String) throws {
        let vae = try tinyVAE()
        let c = try fixtureCase(name)
        var calls: [(Int, Int)] = []
        let out = try vae.decodeTiled(c.z, tiling: c.tiling) { done, total in
            calls.append((done, total))
            return true
        }
        XCTAssertEqual(out.shape, c.tiled.shape)
        let err = relativeMaxError(out, c.tiled)
        XCTAssertLessThanOrEqual(err, tolerance, "\(name): tiled decode relative error \(err)")
        let tiles = try XCTUnwrap(c.meta["tile_rows"] as? Int) * (try XCTUnwrap(c.meta["tile_cols"] as? Int))
        XCTAssertEqual(calls.map(\.0), Array(1...tiles), "\(name): one progress call per tile, in order")
        XCTAssertTrue(calls.allSatisfy { $0.1 == tiles })
        print("parity tiled VAE \(name) (\(tiles) tiles): relative error \(err)")
    }

    func testFourCellTilesMatchDiffusersTiledDecode() throws {
        // 7×10 latents, 4-cell tiles every 3 cells: 3 × 4 tiles, edge tiles one cell wide.
        try checkMatchesDiffusers("small")
    }

    func testEightCellTilesMatchDiffusersTiledDecode() throws {
        // 9×13 latents, 8-cell tiles every 6 cells, 16-pixel blends: 2 × 3 tiles.
        try checkMatchesDiffusers("wide")
    }

    func testTiledDecodeDiffersFromUntiled() throws {
        // The tiles change the image (that is diffusers' behaviour too): the fixture shows it, and sdd agrees.
        let c = try fixtureCase("small")
        let untiled = try XCTUnwrap(c.untiled)
        XCTAssertGreaterThan(relativeMaxError(c.tiled, untiled), 1e-2)
        let vae = try tinyVAE()
        XCTAssertLessThanOrEqual(relativeMaxError(vae(c.z), untiled), tolerance)
        XCTAssertGreaterThan(relativeMaxError(try vae.decodeTiled(c.z, tiling: c.tiling), untiled), 1e-2)
    }

    func testLatentWithinOneTileIsExactlyTheUntiledDecode() throws {
        let vae = try tinyVAE()
        let c = try fixtureCase("fits")
        XCTAssertFalse(c.tiling.applies(latentHeight: c.z.shape[2], latentWidth: c.z.shape[3]))
        let out = try vae.decodeTiled(c.z, tiling: c.tiling)
        XCTAssertEqual(out.data, vae(c.z).data, "no tiling when the latent fits one tile: bit-identical")
        XCTAssertLessThanOrEqual(relativeMaxError(out, c.tiled), tolerance)
        // A latent exactly one tile wide is not tiled either (diffusers tiles only when larger).
        let square = Tensor(shape: [1, 4, 8, 8], data: c.tiled.data.prefix(256).map { $0 })
        XCTAssertEqual(try vae.decodeTiled(square, tiling: VAETiling(tileLatentSize: 8)).data, vae(square).data)
    }

    func testProgressReturningFalseCancelsBetweenTiles() throws {
        let vae = try tinyVAE()
        let c = try fixtureCase("small")
        var calls = 0
        XCTAssertThrowsError(try vae.decodeTiled(c.z, tiling: c.tiling) { done, _ in
            calls += 1
            return done < 2
        }) { error in
            XCTAssertEqual(error as? PipelineError, .cancelled)
        }
        XCTAssertEqual(calls, 2, "no tile is decoded after the handler says stop")
    }

    func testTileGeometryFollowsDiffusers() throws {
        let sd15 = try Self.sd15VAEConfig()
        let d = VAETiling.diffusersDefault(for: sd15)
        XCTAssertEqual([d.tileLatentSize, d.tileSampleSize, d.latentStride, d.blendExtent, d.rowLimit],
                       [64, 512, 48, 128, 384])
        XCTAssertFalse(d.applies(latentHeight: 64, latentWidth: 64), "diffusers does not tile a 512×512 SD 1.5 decode")
        XCTAssertEqual(d.tileCount(latentHeight: 96, latentWidth: 128), 2 * 3)
        for n in [4, 8, 12, 16, 32] { XCTAssertTrue(VAETiling(tileLatentSize: n).preservesSize(scaleFactor: 8), "\(n)") }
        // 6-cell tiles step 4 cells (32 px) but keep 36 px each: diffusers' image would not be 8× the latent.
        XCTAssertFalse(VAETiling(tileLatentSize: 6).preservesSize(scaleFactor: 8))
        XCTAssertThrowsError(try VAETiling(tileLatentSize: 1).validate(), "int(1 × 0.75) = 0: no stride")
        XCTAssertThrowsError(try VAETiling(tileLatentSize: 8, overlapFactor: 1).validate())
    }

    func testPipelineDecodesInTilesWhenAsked() throws {
        let pipeline = try StableDiffusionPipeline(model: try StableDiffusionModel(url: ModelFixtures.tinyModel))
        var s = GenerationSettings(prompt: "a tile")
        s.steps = 1
        s.width = 80
        s.height = 56
        s.seed = 7
        let untiled = try pipeline.generate(s)
        let tiled = try pipeline.generate(s, context: RunContext(vaeTiling: VAETiling(tileLatentSize: 4)))
        XCTAssertEqual(tiled.latents.data, untiled.latents.data)
        XCTAssertEqual(tiled.images[0].count, 80 * 56 * 3)
        XCTAssertNotEqual(tiled.images[0], untiled.images[0])
        XCTAssertThrowsError(try pipeline.generate(s, context: RunContext(vaeTiling: VAETiling(tileLatentSize: 6))), "a tile that would change the image size is refused")
    }

    // MARK: memory

    static func sd15VAEConfig() throws -> VAEConfig {
        let json = """
        {"block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "latent_channels": 4,
         "norm_num_groups": 32, "sample_size": 512, "in_channels": 3, "out_channels": 3}
        """
        return try JSONDecoder().decode(VAEConfig.self, from: Data(json.utf8))
    }

    func testPeakTensorsOfOneTileAreASmallFractionOfTheWholeImage() throws {
        let sd15 = try Self.sd15VAEConfig()
        func tensors(_ h: Int, _ w: Int, batch: Int = 1) -> Int {
            VAEDecoder.peakActivationBytes(config: sd15, latentHeight: h, latentWidth: w, batch: batch,
                                           kernelScratch: false)
        }
        // up_blocks.3.resnets.0 at 512×512: x (256 ch) + norm1(x) (256) + h (128) = 640 floats per pixel, and the
        // input latents.
        let perPixel = 640 * 512 * 512 * 4, latents = 4 * 64 * 64 * 4
        XCTAssertEqual(tensors(64, 64), perPixel + latents)
        XCTAssertLessThan(tensors(16, 16), tensors(64, 64) / 12, "a 16-cell tile holds about 1/16 of the activations")
        XCTAssertEqual(tensors(64, 64, batch: 2), 2 * (perPixel + latents), "activations scale with the batch")
        let tiled = VAEDecoder.decodeBytes(config: sd15, tiling: VAETiling(tileLatentSize: 16), latentHeight: 64,
                                           latentWidth: 64)
        XCTAssertLessThan(tiled.tensors, 48 << 20, "16-cell tiles decode 512×512 in under 48 MiB of tensors")
        XCTAssertEqual(tiled.total, tiled.tensors + tiled.scratch + tiled.buffers)
        XCTAssertGreaterThanOrEqual(tiled.buffers, 512 * 512 * 3, "the 8-bit image is among the buffers")
    }

    func testBudgetPicksTheLargestTileThatFits() throws {
        let sd15 = try Self.sd15VAEConfig()
        XCTAssertNil(try VAEDecoder.tiling(forBudgetBytes: 1 << 30, config: sd15, latentHeight: 64, latentWidth: 64),
                     "the untiled decode fits 1 GiB")
        let budget = 128 << 20
        let chosen = try XCTUnwrap(try VAEDecoder.tiling(forBudgetBytes: budget, config: sd15,
                                                         latentHeight: 64, latentWidth: 64))
        XCTAssertEqual(chosen.tileLatentSize % 8, 0)
        XCTAssertTrue(chosen.preservesSize(scaleFactor: 8))
        XCTAssertLessThanOrEqual(VAEDecoder.tiledDecodeBytes(config: sd15, tiling: chosen, latentHeight: 64,
                                                             latentWidth: 64), budget)
        let next = VAETiling(tileLatentSize: chosen.tileLatentSize + 8)
        XCTAssertGreaterThan(VAEDecoder.tiledDecodeBytes(config: sd15, tiling: next, latentHeight: 64, latentWidth: 64),
                             budget)
        XCTAssertThrowsError(try VAEDecoder.tiling(forBudgetBytes: 16 << 20, config: sd15, latentHeight: 64,
                                                   latentWidth: 64), "8-cell tiles need more than 16 MiB")
    }
}
