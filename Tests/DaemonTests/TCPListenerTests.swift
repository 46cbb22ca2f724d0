// The TCP listener with real sockets, the real worker and the committed tiny model: the OpenAI and A1111 clients'
// requests with a token give the native pipeline's image, missing or wrong tokens get 401 on every route, and a
// client that disconnects leaves a job that still finishes and is fetchable through the native API.

import Daemon
import Foundation
import NIOCore
import Pipeline
import SDDAPI
import XCTest
import TestSupport

/// A blocking one-request HTTP client over TCP to 127.0.0.1 (reads with UnixHTTPClient's helpers).
enum TCPHTTPClient {
    static func connect(port: Int, timeout: Double = 60) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw ClientError(description: "socket: \(errno)") }
        var tv = timeval(tv_sec: Int(timeout), tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0 else {
            close(fd)
            throw ClientError(description: "connect 127.0.0.1:\(port): \(String(cString: strerror(errno)))")
        }
        return fd
    }

    static func head(_ method: String, _ path: String, port: Int, body: [UInt8]?, authorization: String?) -> [UInt8] {
        var head = "\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\nConnection: close\r\n"
        if let authorization { head += "Authorization: \(authorization)\r\n" }
        if let body { head += "Content-Length: \(body.count)\r\nContent-Type: application/json\r\n" }
        return Array((head + "\r\n").utf8) + (body ?? [])
    }

    static func request(port: Int, _ method: String, _ path: String, body: [UInt8]? = nil, authorization: String?,
                        timeout: Double = 120) throws -> HTTPResult {
        let fd = try connect(port: port, timeout: timeout)
        defer { close(fd) }
        try UnixHTTPClient.send(fd, head(method, path, port: port, body: body, authorization: authorization))
        return try UnixHTTPClient.parse(UnixHTTPClient.readAll(fd))
    }
}

final class TCPListenerTests: XCTestCase {
    var dir: URL!
    var port = 0
    var queue: JobQueue!
    var stops: [() async -> Void] = []
    let token = "capture-token-0123456789"  // the token tools/clients/capture.py gave the clients
    var bearer: String { "Bearer \(token)" }

    override func setUp() async throws {
        dir = URL(fileURLWithPath: "/tmp/sdd-tcp-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let tokens = dir.appendingPathComponent("tokens")
        FileManager.default.createFile(atPath: tokens.path, contents: Data("webui \(token)\nbob bob-token-0123456789ab\n".utf8),
                                       attributes: [.posixPermissions: 0o600])
        queue = JobQueue(spool: try Spool(root: dir.appendingPathComponent("state")), maxQueued: 100, logger: .init(label: "test"))
        let worker = Worker(queue: queue, modelURL: ServerTests.tinyModel, keepAlive: 60, logger: .init(label: "test"))
        let router = APIRouter(queue: queue, worker: worker, model: try ModelDescription.read(ServerTests.tinyModel), keepAlive: 60)
        let config = try TCPListenConfiguration(address: TCPAddress(host: "127.0.0.1", port: 0), tokensPath: tokens.path, any: false)
        let listener = TCPListener(config: config, router: router, logger: .init(label: "test"))
        let channel = try await listener.start()
        port = try XCTUnwrap(channel.localAddress?.port)
        worker.start()
        stops = [{ await listener.stop(channel) }, { await worker.stop() }]
    }

    override func tearDown() async throws {
        for stop in stops { await stop() }
        try? FileManager.default.removeItem(at: dir)
    }

    func replay(_ fixture: String, _ call: String, changes: [String: JSONValue] = [:], authorization: String?) throws -> HTTPResult {
        let r = try CapturedRequest.load(fixture, call: call)
        return try TCPHTTPClient.request(port: port, r.method, r.path, body: r.body == nil ? nil : r.bodyBytes(changes),
                                         authorization: authorization)
    }

    func directImage(_ request: JobRequest) throws -> [UInt8] {
        let pipeline = try StableDiffusionPipeline(model: try StableDiffusionModel(url: ServerTests.tinyModel))
        return try pipeline.generate(RequestValidation.settings(request)).images[0]
    }

    func testAnUnparsableRequestGetsAJSON400AndTheConnectionCloses() throws {
        let fd = try TCPHTTPClient.connect(port: port, timeout: 10)
        defer { close(fd) }
        try UnixHTTPClient.send(fd, Array("\u{0}\u{1} not http\r\n\r\n".utf8))
        // The idle timeout (30 s) would close it too, but only long after this wait.
        let (closed, bytes) = UnixHTTPClient.waitForClose(fd, timeout: 10)
        XCTAssertTrue(closed, "still open")
        let r = try UnixHTTPClient.parse(bytes)
        XCTAssertEqual(r.status, 400)
        XCTAssertEqual(r.headers["connection"], "close")
        XCTAssertEqual(try r.json(APIErrorResponse.self).error.code, .badRequest)
        XCTAssertEqual(bytes.count, UnixHTTPClient.find([13, 10, 13, 10], in: bytes, from: 0).map { $0 + 4 + r.body.count },
                       "one response, not NIO's empty 400 followed by another")
    }

    func testARequestIdReplayBelongsToTheTokenThatMadeIt() throws {
        let body = Array(#"{"prompt": "x", "steps": 1, "request_id": "tcp-1"}"#.utf8)
        let first = try TCPHTTPClient.request(port: port, "POST", "/v1/jobs", body: body, authorization: bearer)
        XCTAssertEqual(first.status, 202, first.text)
        let again = try TCPHTTPClient.request(port: port, "POST", "/v1/jobs", body: body, authorization: bearer)
        XCTAssertEqual(again.status, 200, again.text)
        XCTAssertEqual(try again.json(Job.self).id, try first.json(Job.self).id)
        let bob = try TCPHTTPClient.request(port: port, "POST", "/v1/jobs", body: body,
                                            authorization: "Bearer bob-token-0123456789ab")
        XCTAssertEqual(bob.status, 202, "another token's request_id is its own: \(bob.text)")
    }

    func testOpenAIClientWithATokenGetsThePipelinesImage() throws {
        let r = try replay("openai.json", "images.generate", authorization: bearer)
        XCTAssertEqual(r.status, 200, r.text)
        let id = try XCTUnwrap(r.headers["x-sdd-job"])
        let o = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.body)) as? [String: Any])
        let b64 = try XCTUnwrap((o["data"] as? [[String: Any]])?.first?["b64_json"] as? String)
        let png = try PNGReader.decode(Array(try XCTUnwrap(Data(base64Encoded: b64))))
        let job = try XCTUnwrap(queue.job(id, owner: .token("webui")))
        XCTAssertEqual(job.state, .finished)
        // Same code, same process: the very same pixels as the pipeline run directly.
        XCTAssertEqual(png.rgb, try directImage(job.settings))
        XCTAssertTrue(png.text.contains { $0.key == "parameters" && $0.value.contains("Sampler: Euler, ") }, "\(png.text)")
        // The job is an ordinary one: listed and fetchable natively with the same token, not with another.
        let list = try TCPHTTPClient.request(port: port, "GET", "/v1/jobs", authorization: bearer).json(JobList.self)
        XCTAssertEqual(list.jobs.map(\.id), [id])
        XCTAssertEqual(try TCPHTTPClient.request(port: port, "GET", "/v1/jobs/\(id)", authorization: "Bearer bob-token-0123456789ab").status, 404)
    }

    func testA1111ClientWithBasicAuthGetsThePipelinesImage() throws {
        let captured = try CapturedRequest.load("a1111.json", call: "txt2img")
        let r = try replay("a1111.json", "txt2img", authorization: captured.authorization)
        XCTAssertEqual(r.status, 200, r.text)
        let o = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.body)) as? [String: Any])
        let b64 = try XCTUnwrap((o["images"] as? [String])?.first)
        let png = try PNGReader.decode(Array(try XCTUnwrap(Data(base64Encoded: b64))))
        let job = try XCTUnwrap(queue.job(try XCTUnwrap(r.headers["x-sdd-job"]), owner: .token("webui")))
        XCTAssertEqual(job.settings.scheduler, "euler-a")
        XCTAssertEqual(png.rgb, try directImage(job.settings))
    }

    func testMissingOrWrongTokensGet401OnEveryRoute() throws {
        let wrongBasic = "Basic " + Data("webui:capture-token-0123456780".utf8).base64EncodedString()
        for auth in [nil, "Bearer wrong-token-0123456789", wrongBasic] {
            for (fixture, call) in [("openai.json", "images.generate"), ("openai.json", "models.list"), ("a1111.json", "txt2img"),
                                    ("a1111.json", "get_progress")] {
                let r = try replay(fixture, call, authorization: auth)
                XCTAssertEqual(r.status, 401, "\(call) with \(auth ?? "no token")")
                XCTAssertNotNil(r.headers["www-authenticate"])
                let o = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.body)) as? [String: Any])
                XCTAssertEqual((o["error"] as? [String: Any])?["code"] as? String, "unauthorized")
                XCTAssertNotNil(o["detail"] as? String)
            }
            XCTAssertEqual(try TCPHTTPClient.request(port: port, "GET", "/v1/health", authorization: auth).status, 401)
        }
        XCTAssertTrue(queue.list(owner: .uid(0)).isEmpty, "no job was queued")
    }

    func testAJobWhoseClientDisconnectsFinishesAndIsFetchable() throws {
        let captured = try CapturedRequest.load("a1111.json", call: "txt2img")
        let fd = try TCPHTTPClient.connect(port: port)
        try UnixHTTPClient.send(fd, TCPHTTPClient.head("POST", captured.path, port: port,
                                                       body: captured.bodyBytes(["steps": 40]), authorization: bearer))
        // Wait for the job to be accepted (it is on disk then), and go away without reading the answer.
        let accepted = ServeWait.until(timeout: 60) { !self.queue.list(owner: .token("webui")).isEmpty }
        close(fd)
        XCTAssertTrue(accepted, "the request became a job")
        let id = try XCTUnwrap(queue.list(owner: .token("webui")).first?.id)
        XCTAssertEqual(queue.job(id, owner: .token("webui"))?.state.isFinal, false, "the client left before the job ended")
        XCTAssertTrue(ServeWait.until(timeout: 300) { self.queue.job(id, owner: .token("webui"))?.state.isFinal == true })
        XCTAssertEqual(queue.job(id, owner: .token("webui"))?.state, .finished)
        let image = try TCPHTTPClient.request(port: port, "GET", "/v1/jobs/\(id)/images/0", authorization: bearer)
        XCTAssertEqual(image.status, 200)
        XCTAssertEqual(try PNGReader.decode(image.body).rgb, try directImage(try XCTUnwrap(queue.job(id, owner: .token("webui"))).settings))
    }
}

/// Polls a condition until it holds or `timeout` seconds pass (waits for the event, not a fixed time).
enum ServeWait {
    static func until(timeout: Double, _ condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if condition() { return true }
            usleep(20_000)
        }
        return condition()
    }
}
