// Client: HTTP/1.1 requests to the sdd daemon over its Unix socket, with SwiftNIO's ClientBootstrap + NIOHTTP1.
// One connection per request (Connection: close): sdctl makes a handful of requests per run.

import NIOCore
import NIOHTTP1
import NIOPosix
import SDDAPI

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The body of a response as it arrives: chunks until the server's end of message.
struct ResponseBody {
    fileprivate var parts: NIOAsyncChannelInboundStream<HTTPClientResponsePart>.AsyncIterator
    private(set) var isComplete = false

    fileprivate init(parts: NIOAsyncChannelInboundStream<HTTPClientResponsePart>.AsyncIterator) {
        self.parts = parts
    }

    /// The next chunk, or nil at the end of the message (or when the connection closed before it: then
    /// `isComplete` stays false).
    mutating func nextChunk() async throws -> ByteBuffer? {
        while !isComplete, let part = try await parts.next() {
            switch part {
            case .body(let chunk): return chunk
            case .end: isComplete = true
            case .head: throw CLIError("the daemon sent a second response head")
            }
        }
        return nil
    }

    /// The whole body, at most `limit` bytes.
    mutating func collect(limit: Int = 256 << 20) async throws -> [UInt8] {
        var bytes: [UInt8] = []
        while let chunk = try await nextChunk() {
            guard bytes.count + chunk.readableBytes <= limit else {
                throw CLIError("response larger than \(limit) bytes")
            }
            bytes.append(contentsOf: chunk.readableBytesView)
        }
        guard isComplete else { throw CLIError("the daemon closed the connection in the middle of a response") }
        return bytes
    }

    /// Reads the body line by line (NDJSON); `line` returns false to stop early. Returns whether the
    /// message ended normally (false: stopped early or the connection closed).
    mutating func forEachLine(_ line: ([UInt8]) async throws -> Bool) async throws -> Bool {
        var pending: [UInt8] = []
        while let chunk = try await nextChunk() {
            pending.append(contentsOf: chunk.readableBytesView)
            var start = 0
            while let newline = pending[start...].firstIndex(of: UInt8(ascii: "\n")) {
                let text = Array(pending[start..<newline])
                start = newline + 1
                if text.contains(where: { $0 != UInt8(ascii: " ") && $0 != UInt8(ascii: "\r") }) {
                    guard try await line(text) else { return false }
                }
            }
            pending.removeFirst(start)
        }
        if !pending.isEmpty, isComplete {
            guard try await line(pending) else { return false }
        }
        return isComplete
    }
}

/// A client of one daemon socket.
struct SDDClient: Sendable {
    /// Path of the daemon's Unix socket.
    let socketPath: String
    /// Seconds a request may take from connecting to the end of the response (for an event stream: to its
    /// head; then silence longer than a few heartbeats ends it). `--timeout`.
    var timeout: Double = SDDClient.defaultTimeout

    static let defaultTimeout = 30.0
    /// An event stream that carries nothing (not even a heartbeat) for this many heartbeat intervals is taken
    /// for a daemon that stopped or died.
    static let silentHeartbeats = 3.0

    /// Sends one request and hands the status and body to `handle`. Throws `CLIError` with a
    /// "cannot connect … is sdd serve running?" message when the socket does not answer.
    /// - streaming: the response is an event stream: the timeout covers only its head, and then the stream ends
    ///   with a "no heartbeat" connection failure when nothing arrives for `silentHeartbeats` intervals.
    func exchange<T: Sendable>(
        _ method: HTTPMethod, _ path: String, body: [UInt8]? = nil, streaming: Bool = false,
        _ handle: (_ status: Int, _ body: inout ResponseBody) async throws -> T
    ) async throws -> T {
        // A GET whose connection closed before any answer came is safe to send again (it changes nothing);
        // other methods are not retried here (submissions are retried with their request_id by `submit`).
        var attempt = 0
        while true {
            do {
                return try await exchangeOnce(method, path, body: body, streaming: streaming, handle)
            } catch let error as ChannelError where error == .ioOnClosedChannel && method == .GET && attempt < 2 {
                attempt += 1
                try await Task.sleep(nanoseconds: 100_000_000)
            }
        }
    }

    private func exchangeOnce<T: Sendable>(
        _ method: HTTPMethod, _ path: String, body: [UInt8]? = nil, streaming: Bool,
        _ handle: (_ status: Int, _ body: inout ResponseBody) async throws -> T
    ) async throws -> T {
        let channel = try await connect(streaming: streaming)
        do {
            return try await exchange(on: channel, method, path, body: body, handle)
        } catch let silence as ResponseDeadline.Expired {
            var e = CLIError(silence.message(socket: socketPath))
            e.isConnectionFailure = true
            throw e
        }
    }

    private func exchange<T: Sendable>(
        on channel: NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>,
        _ method: HTTPMethod, _ path: String, body: [UInt8]?,
        _ handle: (_ status: Int, _ body: inout ResponseBody) async throws -> T
    ) async throws -> T {
        try await channel.executeThenClose { inbound, outbound in
            var head = HTTPRequestHead(version: .http1_1, method: method, uri: path)
            head.headers.add(name: "Host", value: "localhost")
            head.headers.add(name: "User-Agent", value: "sdctl")
            head.headers.add(name: "Connection", value: "close")
            if let body {
                head.headers.add(name: "Content-Type", value: "application/json")
                head.headers.add(name: "Content-Length", value: String(body.count))
            }
            try await outbound.write(.head(head))
            if let body { try await outbound.write(.body(.byteBuffer(ByteBuffer(bytes: body)))) }
            try await outbound.write(.end(nil))

            var parts = inbound.makeAsyncIterator()
            while true {
                guard let part = try await parts.next() else {
                    var e = CLIError("the daemon closed the connection without a response")
                    e.isConnectionFailure = true
                    throw e
                }
                guard case .head(let responseHead) = part else { continue }
                if responseHead.status.code / 100 == 1 { continue }  // 100 Continue and friends
                var reader = ResponseBody(parts: parts)
                return try await handle(Int(responseHead.status.code), &reader)
            }
        }
    }

    /// A request whose 2xx response body decodes as `T`; other statuses throw the API's error.
    func json<T: Decodable & Sendable>(_ method: HTTPMethod, _ path: String, body: [UInt8]? = nil,
                                       as type: T.Type = T.self) async throws -> (value: T, raw: [UInt8]) {
        try await exchange(method, path, body: body) { status, reader in
            let bytes = try await reader.collect()
            guard (200..<300).contains(status) else { throw Self.apiError(status: status, body: bytes) }
            do {
                return (try JSONDecoder().decode(T.self, from: Data(bytes)), bytes)
            } catch {
                throw CLIError("unexpected response to \(method) \(path): \(error)")
            }
        }
    }

    /// The error a non-2xx response carries: its `{"error": {code, message}}` body, or the status.
    static func apiError(status: Int, body: [UInt8]) -> CLIError {
        if let response = try? JSONDecoder().decode(APIErrorResponse.self, from: Data(body)) {
            return CLIError(api: response.error, status: status)
        }
        let text = String(String(decoding: body.prefix(200), as: UTF8.self).filter { $0 != "\n" && $0 != "\r" })
        var error = CLIError("HTTP \(status)\(text.isEmpty ? "" : ": \(text)")")
        error.httpStatus = status
        return error
    }

    private func connect(streaming: Bool) async throws
        -> NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart> {
        let timeout = self.timeout
        do {
            return try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connectTimeout(.milliseconds(Int64(timeout * 1000)))
                .connect(unixDomainSocketPath: socketPath) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHTTPClientHandlers()
                        try channel.pipeline.syncOperations.addHandler(
                            ResponseDeadline(seconds: timeout, streaming: streaming))
                        return try NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>(
                            wrappingChannelSynchronously: channel)
                    }
                }
        } catch {
            throw CLIError.cannotConnect(socketPath, error)
        }
    }
}

/// Ends a response that takes too long: no complete answer within `seconds` of connecting, or, for an event
/// stream, nothing at all (not even a heartbeat) for `SDDClient.silentHeartbeats` of the daemon's heartbeat
/// intervals. It closes the connection and the reader gets `Expired`.
final class ResponseDeadline: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias InboundOut = HTTPClientResponsePart

    struct Expired: Error {
        /// Seconds waited.
        let seconds: Double
        /// True: an event stream went silent; false: no answer to a request.
        let silentStream: Bool

        func message(socket: String) -> String {
            let waited = Format.seconds(seconds)
            return silentStream
                ? "the daemon at \(socket) sent nothing, not even a heartbeat, for \(waited); is it stopped or hung?"
                : "the daemon at \(socket) did not answer within \(waited) (--timeout); is it stopped or hung?"
        }
    }

    private let seconds: Double
    private let streaming: Bool
    private var silenceLimit: Double?
    private var timer: Scheduled<Void>?

    init(seconds: Double, streaming: Bool) {
        self.seconds = seconds
        self.streaming = streaming
    }

    func handlerAdded(context: ChannelHandlerContext) {
        arm(context: context, after: seconds, silent: false)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head) where streaming && head.status.code / 100 == 2:
            // A stream may stay open for hours: from here on only silence ends it.
            let interval = head.headers.first(name: JobEvent.heartbeatHeader).flatMap(Double.init)
                .flatMap { $0 > 0 && $0.isFinite ? $0 : nil } ?? JobEvent.defaultHeartbeatSeconds
            silenceLimit = interval * SDDClient.silentHeartbeats
        case .head:
            break
        case .body:
            if let limit = silenceLimit { arm(context: context, after: limit, silent: true) }
        case .end:
            timer?.cancel()
            timer = nil
        }
        context.fireChannelRead(data)
    }

    func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        context.fireChannelInactive()
    }

    private func arm(context: ChannelHandlerContext, after seconds: Double, silent: Bool) {
        timer?.cancel()
        let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(in: .milliseconds(Int64(seconds * 1000))) {
            bound.value.fireErrorCaught(Expired(seconds: seconds, silentStream: silent))
            bound.value.close(promise: nil)
        }
    }
}

extension CLIError {
    /// "cannot connect to /run/sdd/sdd.sock: No such file or directory; is sdd serve running?"
    static func cannotConnect(_ path: String, _ error: any Error) -> CLIError {
        var reason = "\(error)"
        var hint = "is sdd serve running?"
        if let io = error as? IOError {
            reason = String(cString: strerror(io.errnoCode))
            if io.errnoCode == EACCES || io.errnoCode == EPERM {
                hint = "is your user in the socket's group (sdd)? Or set --socket / $SDD_SOCKET."
            }
        } else if error is SocketAddressError {
            reason = "the path is not a usable socket address (too long?)"
            hint = "use a shorter --socket path"
        }
        var e = CLIError("cannot connect to \(path): \(reason); \(hint)")
        e.isConnectionFailure = true
        return e
    }
}
