// The API's LoRAs: named, never a path; a name outside `--lora-dir` (or any name without one) is a 400 that names
// the field, and the prompt's <lora:NAME:SCALE> tags are checked the same way before a job is accepted.

import Daemon
import Foundation
import SDDAPI
import XCTest

final class LoRARequestTests: XCTestCase {
    static let loraDir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/lora", isDirectory: true)
    var dir: URL!
    var router: APIRouter!
    let alice = PeerCredentials(pid: 1, uid: 1000, gid: 1000)

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("sdd-lora-\(UUID().uuidString)")
        let queue = JobQueue(spool: try Spool(root: dir), maxQueued: 10, logger: .init(label: "test"))
        router = APIRouter(queue: queue, worker: nil, model: ModelDescription(
            url: URL(fileURLWithPath: "/m/tiny"), name: "tiny", defaults: ModelDefaults(width: 64, height: 64, sizeMultiple: 8),
            loraDirectory: Self.loraDir), keepAlive: 300)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: dir) }

    private func post(_ body: String) -> APIResponse {
        router.route(APIRequest(method: "POST", uri: "/v1/jobs", body: Array(body.utf8), peer: alice))
    }

    private func assertRefused(_ body: String, mentioning: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let r = post(body)
        XCTAssertEqual(r.status, 400, body, file: file, line: line)
        let e = try r.decode(APIErrorResponse.self).error
        XCTAssertTrue(e.message.contains(mentioning), "\(e.message) should mention \(mentioning)", file: file, line: line)
    }

    func testANamedLoRAInTheDirectoryIsAcceptedAndKeptWithTheJob() throws {
        let r = post(#"{"prompt": "a cat <lora:kohya_unet_te:0.5>", "loras": [{"name": "peft_unet_te", "scale": 0.8}]}"#)
        XCTAssertEqual(r.status, 202, String(decoding: r.body, as: UTF8.self))
        let job = try r.decode(Job.self)
        XCTAssertEqual(job.settings.loras, [LoRARef(name: "peft_unet_te", scale: 0.8)])
        XCTAssertEqual(job.settings.prompt, "a cat <lora:kohya_unet_te:0.5>")
        let (prompt, specs) = try RequestValidation.loras(job.settings, loraDirectory: Self.loraDir)
        XCTAssertEqual(prompt, "a cat ")
        XCTAssertEqual(specs.map { URL(fileURLWithPath: $0.path).lastPathComponent },
                       ["peft_unet_te.safetensors", "kohya_unet_te.safetensors"])
        XCTAssertEqual(specs.map(\.scale), [0.8, 0.5])
    }

    func testANameWithPathComponentsIsA400NamingTheField() throws {
        for name in ["../lora/peft_unet_te", "/etc/passwd", "sub/x", ".hidden"] {
            try assertRefused(#"{"prompt": "x", "loras": [{"name": "peft_unet_te"}, {"name": "\#(name)"}]}"#,
                              mentioning: "loras[1].name")
        }
    }

    func testANameNotInTheDirectoryIsA400() throws {
        try assertRefused(#"{"prompt": "x", "loras": [{"name": "nothere"}]}"#, mentioning: "loras[0].name")
        try assertRefused(#"{"prompt": "x <lora:nothere:1>"}"#, mentioning: "prompt")
        try assertRefused(#"{"prompt": "x <lora:../../etc/passwd>"}"#, mentioning: "plain file name")
    }

    func testWithoutALoRADirectoryNoLoRAMayBeNamed() throws {
        let queue = JobQueue(spool: try Spool(root: dir.appendingPathComponent("b")), maxQueued: 10, logger: .init(label: "t"))
        router = APIRouter(queue: queue, worker: nil, model: ModelDescription(url: nil, name: "", defaults: nil),
                           keepAlive: nil)
        try assertRefused(#"{"prompt": "x", "loras": [{"name": "peft_unet_te"}]}"#, mentioning: "--lora-dir")
    }

    func testBadScalesAndUnknownLoRAFieldsAreRefused() throws {
        try assertRefused(#"{"prompt": "x", "loras": [{"name": "peft_unet_te", "scale": 1000}]}"#,
                          mentioning: "loras[0].scale")
        try assertRefused(#"{"prompt": "x", "loras": [{"name": "peft_unet_te", "path": "/x"}]}"#, mentioning: "path")
        try assertRefused(#"{"prompt": "x", "loras": [{"scale": 1}]}"#, mentioning: "name")
    }
}
