// The config bound tables: each bounded number of the tiny model's UNet and text encoder config, set just outside
// its range, is refused naming that field; the config as it is passes.

import Foundation
import XCTest

@testable import Pipeline

final class ConfigBoundsTests: XCTestCase {
    func json(_ component: String) throws -> [String: Any] {
        let url = SamplingFixtures.root.appendingPathComponent("tiny-sd/\(component)/config.json")
        return try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any])
    }

    /// For every scalar bound, the config with that key at range.lower − 1 and range.upper + 1 is refused by
    /// `validate`, and the message names the key.
    func assertEveryBoundIsChecked<Config: Decodable>(
        _ type: Config.Type, component: String, bounds: [ConfigBound<Config>], validate: (Config) throws -> Void
    ) throws {
        let original = try json(component)
        XCTAssertNoThrow(try validate(JSONDecoder().decode(Config.self, from: JSONSerialization.data(withJSONObject: original))))
        var checked = 0
        for bound in bounds {
            guard case .one = bound.value, original[bound.field] != nil else { continue }
            for outside in [bound.range.lowerBound - 1, bound.range.upperBound + 1] {
                var edited = original
                edited[bound.field] = outside
                let config = try JSONDecoder().decode(Config.self, from: JSONSerialization.data(withJSONObject: edited))
                XCTAssertThrowsError(try validate(config), "\(bound.field) = \(outside)") { error in
                    XCTAssertTrue("\(error)".contains("\"\(bound.field)\""), "\(error)")
                }
            }
            checked += 1
        }
        XCTAssertGreaterThan(checked, 0)
    }

    func testEveryUNetBoundIsCheckedByValidate() throws {
        try assertEveryBoundIsChecked(UNetConfig.self, component: "unet", bounds: UNetConfig.bounds) {
            try $0.validate(file: "unet/config.json")
        }
    }

    func testEveryTextEncoderBoundIsCheckedByValidate() throws {
        try assertEveryBoundIsChecked(CLIPTextConfig.self, component: "text_encoder", bounds: CLIPTextConfig.bounds) {
            try $0.validate(file: "text_encoder/config.json")
        }
    }

    func testAListBoundNamesTheListWhenOneEntryIsOutOfRange() throws {
        var edited = try json("unet")
        var channels = try XCTUnwrap(edited["block_out_channels"] as? [Int])
        channels[channels.count - 1] = ConfigLimits.channels + 1
        edited["block_out_channels"] = channels
        let config = try JSONDecoder().decode(UNetConfig.self, from: JSONSerialization.data(withJSONObject: edited))
        XCTAssertThrowsError(try config.validate(file: "unet/config.json")) { error in
            XCTAssertTrue("\(error)".contains("\"block_out_channels\""), "\(error)")
        }
    }
}
