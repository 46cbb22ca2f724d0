// The text encoder and the TAESD decoder are each one list of blocks: every weight is in exactly one group of that
// list, the forward pass runs the groups once in list order, and streaming by group identity changes no number.

import Foundation
@testable import Pipeline
import TiledKernels
import XCTest

final class TextEncoderAndTAESDBlockListTests: XCTestCase {
    private func textEncoder(_ residency: WeightResidency) throws -> (CLIPTextEncoder, [[Int32]]) {
        let model = try StableDiffusionModel(url: ModelFixtures.tinyModel)
        let weights = try ComponentWeights(directory: model.url, component: "text_encoder")
        let ids = try XCTUnwrap(try ModelFixtures.tensors("text_encoder.safetensors")["input_ids"])
        let rows = ids.shape[0], tokens = ids.shape[1]
        let idRows = (0..<rows).map { r in (0..<tokens).map { Int32(ids[r * tokens + $0]) } }
        return (try CLIPTextEncoder(config: model.textEncoder, weights: weights, residency: residency), idRows)
    }

    private func taesd() throws -> TinyAutoencoderDecoder {
        let folder = ModelFixtures.root.appendingPathComponent("tiny-taesd")
        let config = try JSONDecoder().decode(TinyAutoencoderConfig.self,
                                              from: Data(contentsOf: folder.appendingPathComponent("config.json")))
        return try TinyAutoencoderDecoder(config: config, weights: ComponentWeights(directory: folder, component: ""))
    }

    func testTheTextEncoderRunsEveryWeightGroupOnceInListOrder() throws {
        let (encoder, ids) = try textEncoder(.streamed)
        var visited: [WeightGroupID] = []
        encoder.streamer.onRun = { visited.append($0) }
        _ = try encoder.encode(ids)
        encoder.streamer.onRun = nil
        XCTAssertEqual(visited, encoder.streamer.groupIDs)
        XCTAssertEqual(visited.count, encoder.config.numHiddenLayers + 2, "embeddings, every layer, the final norm")
    }

    func testEveryTextEncoderWeightIsInExactlyOneGroupButTheTokenTable() throws {
        let (encoder, _) = try textEncoder(.streamed)
        let grouped = encoder.blocks.flatMap(\.weights)
        let addresses = grouped.compactMap { $0.bytes.baseAddress }
        XCTAssertEqual(Set(addresses).count, addresses.count, "a weight appears in two groups")
        let names = try ComponentWeights(directory: ModelFixtures.tinyModel, component: "text_encoder").tensorNames
        // The token table is read row by row (the prompt's rows only) and released after the lookup.
        XCTAssertEqual(grouped.count + 1, names.count, "every tensor of the text encoder is bound by one block")
    }

    func testAStreamedTextEncoderGivesExactlyTheResidentResult() throws {
        let (resident, ids) = try textEncoder(.resident)
        let (streamed, _) = try textEncoder(.strict)
        XCTAssertEqual(try streamed.encode(ids).data, try resident.encode(ids).data)
    }

    func testTheTAESDDecodeRunsEveryStepOnceInListOrder() throws {
        let tiny = try taesd()
        var random = TorchRandom(seed: 9)
        let z = random.randn([1, tiny.config.latentChannels, 6, 5])
        var visited: [WeightGroupID] = []
        tiny.streamer.onRun = { visited.append($0) }
        _ = tiny(z)
        XCTAssertEqual(visited, tiny.streamer.groupIDs)
        XCTAssertEqual(visited.count, tiny.steps.count)
        // Banded: the whole steps once, then the later steps once per band, each time in list order.
        visited = []
        let bands = TinyAutoencoderBands(wholeSteps: 4, bandRows: 3)
        _ = try tiny.decode(z, bands: bands)
        tiny.streamer.onRun = nil
        let later = Array(tiny.streamer.groupIDs[4...])
        let count = visited.count - 4
        XCTAssertEqual(Array(visited.prefix(4)), Array(tiny.streamer.groupIDs.prefix(4)))
        XCTAssertEqual(count % later.count, 0)
        XCTAssertEqual(Array(visited.dropFirst(4)), Array(repeating: later, count: count / later.count).flatMap { $0 })
        XCTAssertEqual(count / later.count, 2, "6 latent rows after the conv and three blocks: two bands of 3")
    }

    func testEveryTAESDDecoderWeightIsInExactlyOneGroup() throws {
        let tiny = try taesd()
        let grouped = tiny.steps.flatMap(\.weights)
        let addresses = grouped.compactMap { $0.bytes.baseAddress }
        XCTAssertEqual(Set(addresses).count, addresses.count, "a weight appears in two groups")
        let names = try ComponentWeights(directory: ModelFixtures.root.appendingPathComponent("tiny-taesd"),
                                         component: "").tensorNames
        XCTAssertEqual(grouped.count, names.filter { $0.hasPrefix("decoder.") }.count,
                       "every decoder tensor is bound by one step")
        XCTAssertEqual(tiny.totalWeightBytes, grouped.reduce(0) { $0 + $1.bytes.count })
    }
}
