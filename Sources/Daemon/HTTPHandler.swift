// HTTPHandler: one connection's HTTP/1.1 exchange — body size limit (413), request and idle deadlines for slow
// or half-closed clients, routing off the event loop, and NDJSON event streams.

import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import SDDAPI

/// Timeouts that keep slow clients from holding connections.
public struct ConnectionLimits: Sendable {
    /// A connection with no bytes in flight and nothing being answered is closed after this long, seconds.
    public var idleTimeout: Double
    /// A request must arrive completely (head and body) within this long of the connection opening or the
    /// previous response, seconds.
    public var requestTimeout: Double
    /// Largest body, bytes.
    public var maxBodyBytes: Int
    /// An event stream carries a `heartbeat` event this often, seconds, so clients can tell a quiet job from a
    /// dead daemon.
    public var eventHeartbeat: Double

    public init(idleTimeout: Double = 30, requestTimeout: Double = 60,
                maxBodyBytes: Int = APIVersion.maxRequestBodyBytes,
                eventHeartbeat: Double = JobEvent.defaultHeartbeatSeconds) {
        self.idleTimeout = idleTimeout
        self.requestTimeout = requestTimeout
        self.maxBodyBytes = maxBodyBytes
        self.eventHeartbeat = eventHeartbeat
    }
}

final class HTTPHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let router: APIRouter
    private let queue: JobQueue
    private let peer: PeerCredentials
    private let threadPool: NIOThreadPool
    private let limits: ConnectionLimits
    /// Set on the TCP listener: each request must carry a token, whose NAME it acts for (else 401).
    private let tokens: TokenFile?
    /// Who the request being answered acts for.
    private var owner: JobOwner

    private var head: HTTPRequestHead?
    private var body: [UInt8] = []
    /// The body went over the limit: 413 sent; the rest of the body is read and dropped (so the client can read
    /// the answer instead of a reset), then the connection closes.
    private var rejected = false
    private var drained = 0
    /// At most this much of a rejected body is drained before closing anyway, bytes.
    private static let maxDrain = 4 << 20
    /// A response is being produced (routing on the pool, or an event stream).
    private var busy = false
    private var subscription: (id: String, token: UInt64)?
    private var streaming = false
    /// Sends the event stream's heartbeat events.
    private var heartbeat: RepeatedTask?
    /// The client shut down its sending side: close once the answer is out.
    private var inputClosed = false
    private var deadline: Scheduled<Void>?
    /// The input could not be parsed (or the connection failed): nothing more is read or answered.
    private var failed = false

    init(router: APIRouter, peer: PeerCredentials, threadPool: NIOThreadPool, limits: ConnectionLimits,
         tokens: TokenFile? = nil) {
        self.tokens = tokens
        self.owner = .uid(peer.uid)
        self.router = router
        self.queue = router.queue
        self.peer = peer
        self.threadPool = threadPool
        self.limits = limits
    }

    func handlerAdded(context: ChannelHandlerContext) {
        armDeadline(context: context)
    }

    func channelInactive(context: ChannelHandlerContext) {
        deadline?.cancel()
        heartbeat?.cancel()
        heartbeat = nil
        endSubscription()
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            // Idle with nothing to answer: a silent or half-open client. Streams and pending answers stay.
            if !busy { context.close(promise: nil) }
            return
        }
        if let e = event as? ChannelEvent, e == .inputClosed {
            // Half-closed: finish what is being answered, then close.
            inputClosed = true
            if !busy { context.close(promise: nil) }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    /// Bytes that are not HTTP/1.1 (garbage, a request line or header block over the decoder's 80 KiB) end the
    /// connection: the decoder cannot find the next request in what follows. The client gets a 400 with the
    /// usual JSON error body and `Connection: close`, and the socket closes as soon as that is written.
    /// (NIO's pipeline handler holds a parse error back while a response is in flight, so it arrives here
    /// between responses.) Any other error (a reset, a failed write) closes the connection.
    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard context.channel.isActive, !failed else { return }
        failed = true
        // A pipeline set up with NIO's own error handling has answered already (an empty 400): a second answer
        // would trip NIO's pipelining checks, so only close.
        let answered = (try? context.pipeline.syncOperations.handler(type: HTTPServerProtocolErrorHandler.self)) != nil
        guard let parse = error as? HTTPParserError, !busy, !streaming, !answered else {
            context.close(promise: nil)
            return
        }
        deadline?.cancel()
        busy = true
        let request = HTTPRequestHead(version: .http1_1, method: .GET, uri: "/")
        respond(context: context, head: request, .error(APIError(.badRequest, Self.describe(parse))), forceClose: true)
    }

    static func describe(_ error: HTTPParserError) -> String {
        switch error {
        case .headerOverflow:
            return "the request line and headers are longer than the 80 KiB this server reads; the connection is closed"
        default:
            return "the request is not HTTP/1.1 this server can read (\(error)); the connection is closed"
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h):
            head = h
            body = []
            rejected = false
            if let length = h.headers.first(name: "content-length").flatMap(Int.init), length > limits.maxBodyBytes {
                reject(context: context)
                return
            }
            if h.headers.first(name: "expect")?.lowercased() == "100-continue" {
                context.writeAndFlush(wrapOutboundOut(.head(HTTPResponseHead(version: h.version, status: .continue))), promise: nil)
            }
        case .body(var chunk):
            guard !rejected else {
                drained += chunk.readableBytes
                if drained > Self.maxDrain { context.close(promise: nil) }
                return
            }
            if body.count + chunk.readableBytes > limits.maxBodyBytes {
                reject(context: context)
                return
            }
            body += chunk.readBytes(length: chunk.readableBytes) ?? []
        case .end:
            if rejected {
                context.close(promise: nil)
                return
            }
            guard let h = head else { return }
            deadline?.cancel()
            busy = true
            let requestBody = body
            body = []
            if let tokens {
                guard let name = tokens.name(authorization: h.headers.first(name: "authorization")) else {
                    respond(context: context, head: h, TokenFile.unauthorized())
                    return
                }
                owner = .token(name)
            }
            var headers: [String: String] = [:]
            for (name, value) in h.headers where headers[name.lowercased()] == nil { headers[name.lowercased()] = value }
            let request = APIRequest(method: h.method.rawValue, uri: h.uri, body: requestBody, peer: peer,
                                     owner: owner, headers: headers)
            let router = self.router
            threadPool.runIfActive(eventLoop: context.eventLoop) { router.route(request) }
                .assumeIsolated()
                .whenComplete { result in
                    switch result {
                    case .success(let response): self.respond(context: context, head: h, response)
                    case .failure(let error):
                        self.respond(context: context, head: h,
                                     .error(APIError(.internalError, "the request could not be handled: \(error)")))
                    }
                }
        }
    }

    private func reject(context: ChannelHandlerContext) {
        rejected = true
        drained = 0
        busy = true
        let h = head ?? HTTPRequestHead(version: .http1_1, method: .POST, uri: "/")
        respond(context: context, head: h, .error(APIError(
            .bodyTooLarge, "the body is larger than \(limits.maxBodyBytes) bytes")), forceClose: true)
    }

    private func respond(context: ChannelHandlerContext, head request: HTTPRequestHead, _ r: APIResponse,
                         forceClose: Bool = false) {
        guard context.channel.isActive else {
            r.file?.close()
            return
        }
        if let wait = r.awaitJob {
            waitForJob(context: context, head: request, wait)
            return
        }
        let keepAlive = request.isKeepAlive && !forceClose && !inputClosed && r.eventsFor == nil
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: r.contentType)
        for (k, v) in r.headers { headers.add(name: k, value: v) }
        if r.eventsFor == nil { headers.add(name: "Content-Length", value: "\(r.file?.size ?? r.body.count)") }
        if r.eventsFor != nil { headers.add(name: JobEvent.heartbeatHeader, value: "\(limits.eventHeartbeat)") }
        headers.add(name: "Connection", value: keepAlive ? "keep-alive" : "close")
        let status = HTTPResponseStatus(statusCode: r.status)
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: request.version, status: status, headers: headers))),
                      promise: nil)
        if let id = r.eventsFor {
            startEvents(context: context, id: id)
            return
        }
        if let file = r.file {
            // sendfile as the socket drains: the image never sits in this process's memory, and a client that
            // stops reading stops the sending. The file closes (and its download slot frees) once the whole body
            // is out or the connection is gone; the next request's deadline starts only then.
            context.write(wrapOutboundOut(.body(.fileRegion(file.region))), promise: nil)
            let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
            busy = false
            done.assumeIsolated().whenComplete { result in
                file.close()
                if keepAlive, case .success = result, context.channel.isActive {
                    // A pipelined request may already be in hand; its own answer re-arms the deadline.
                    if !self.busy { self.armDeadline(context: context) }
                } else {
                    context.close(promise: nil)
                }
            }
            return
        }
        if !r.body.isEmpty {
            context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: r.body)))), promise: nil)
        }
        let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        busy = false
        if keepAlive {
            armDeadline(context: context)
        } else if rejected {
            // Closed once the rest of the body is drained (or by the request deadline).
        } else {
            done.assumeIsolated().whenComplete { _ in context.close(promise: nil) }
        }
    }

    // MARK: answers that wait for a job

    /// Answers once the job is final; the head is not written yet. A client that closes first only unsubscribes.
    private func waitForJob(context: ChannelHandlerContext, head: HTTPRequestHead, _ wait: JobWait) {
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let loop = context.eventLoop
        let token = wait.start(on: queue) { response in
            loop.execute {
                let (handler, context) = bound.value
                handler.subscription = nil
                handler.respond(context: context, head: head, response)
            }
        }
        if let token { subscription = (wait.id, token) }
    }

    // MARK: events

    private func startEvents(context: ChannelHandlerContext, id: String) {
        streaming = true
        context.flush()
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let loop = context.eventLoop
        let subscribed = queue.subscribe(id, owner: owner) { event in
            loop.execute { bound.value.0.send(event, context: bound.value.1) }
        }
        guard let subscribed else {
            finishEvents(context: context)
            return
        }
        if let token = subscribed.token { subscription = (id, token) }
        for event in subscribed.initial { send(event, context: context) }
        if streaming {
            let interval = TimeAmount.milliseconds(Int64(limits.eventHeartbeat * 1000))
            heartbeat = loop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { _ in
                bound.value.0.send(JobEvent(event: .heartbeat, job: id, time: JobQueue.now()), context: bound.value.1)
            }
        }
    }

    private func send(_ event: JobEvent, context: ChannelHandlerContext) {
        guard streaming, context.channel.isActive else { return }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        guard let data = try? encoder.encode(event) else { return }
        var buffer = context.channel.allocator.buffer(capacity: data.count + 1)
        buffer.writeBytes(data)
        buffer.writeInteger(UInt8(0x0A))
        context.writeAndFlush(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
        if event.isFinal { finishEvents(context: context) }
    }

    private func finishEvents(context: ChannelHandlerContext) {
        streaming = false
        heartbeat?.cancel()
        heartbeat = nil
        endSubscription()
        context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in context.close(promise: nil) }
    }

    private func endSubscription() {
        if let s = subscription { queue.unsubscribe(s.id, token: s.token) }
        subscription = nil
    }

    /// Ends an event stream early (daemon shutting down).
    func closeForShutdown(context: ChannelHandlerContext) {
        if streaming { finishEvents(context: context) } else if !busy { context.close(promise: nil) }
    }

    private func armDeadline(context: ChannelHandlerContext) {
        deadline?.cancel()
        let loop = context.eventLoop
        let bound = NIOLoopBound(context, eventLoop: loop)
        deadline = loop.scheduleTask(in: .milliseconds(Int64(limits.requestTimeout * 1000))) {
            bound.value.close(promise: nil)
        }
    }
}
