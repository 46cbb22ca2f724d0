// The UNet is one list of blocks: the forward pass runs every weight group of that list exactly once, in list
// order, and streaming its weights by group identity changes no number.

import Foundation
@testable import Pipeline
import TiledKernels
import XCTest

final class UNetBlockListTests: XCTestCase {
    private func tinyUNet(_ residency: WeightResidency) throws -> (UNet, Tensor, Tensor, Float) {
        let directory = ModelFixtures.tinyModel
        let configURL = directory.appendingPathComponent("unet").appendingPathComponent("config.json")
        let config = try JSONDecoder().decode(UNetConfig.self, from: Data(contentsOf: configURL))
        let unet = try UNet(config: config, weights: try ComponentWeights(directory: directory, component: "unet"),
                            residency: residency)
        let ref = try ModelFixtures.tensors("unet.safetensors")
        return (unet, try XCTUnwrap(ref["sample"]), try XCTUnwrap(ref["encoder_hidden_states"]),
                try XCTUnwrap(ref["timestep"])[0])
    }

    func testTheForwardPassRunsEveryWeightGroupOnceInListOrder() throws {
        let (unet, sample, context, t) = try tinyUNet(.streamed)
        for memory in [UNetMemoryMode.fastest, .compact] {
            var visited: [WeightGroupID] = []
            unet.streamer.onRun = { visited.append($0) }
            _ = unet(sample, timestep: t, context: context, memory: memory)
            unet.streamer.onRun = nil
            XCTAssertEqual(visited, unet.streamer.groupIDs, "\(memory)")
        }
    }

    func testEveryWeightIsInExactlyOneGroupOfTheList() throws {
        let (unet, _, _, _) = try tinyUNet(.streamed)
        let grouped = unet.blocks.flatMap(\.groups).flatMap { $0 }
        let addresses = grouped.compactMap { $0.bytes.baseAddress }
        XCTAssertEqual(Set(addresses).count, addresses.count, "a weight appears in two groups")
        let weights = try ComponentWeights(directory: ModelFixtures.tinyModel, component: "unet")
        XCTAssertEqual(grouped.count, weights.tensorNames.count, "every tensor of the UNet is bound by one block")
    }

    func testStreamedWeightsGiveExactlyTheResidentResult() throws {
        let (resident, sample, context, t) = try tinyUNet(.resident)
        let (streamed, _, _, _) = try tinyUNet(.strict)
        for memory in [UNetMemoryMode.fastest, .compact] {
            XCTAssertEqual(streamed(sample, timestep: t, context: context, memory: memory).data,
                           resident(sample, timestep: t, context: context, memory: memory).data, "\(memory)")
        }
    }
}
