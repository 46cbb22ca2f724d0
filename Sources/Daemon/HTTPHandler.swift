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

    public init(idleTimeout: Double = 30, requestTimeout: Double = 60, maxBodyBytes: Int = APIVersion.maxRequestBodyBytes) {
        self.idleTimeout = idleTimeout
        self.requestTimeout = requestTimeout
        self.maxBodyBytes = maxBodyBytes
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
    /// The client shut down its sending side: close once the answer is out.
    private var inputClosed = false
    private var deadline: Scheduled<Void>?

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
        guard context.channel.isActive else { return }
        if let wait = r.awaitJob {
            waitForJob(context: context, head: request, wait)
            return
        }
        let keepAlive = request.isKeepAlive && !forceClose && !inputClosed && r.eventsFor == nil
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: r.contentType)
        for (k, v) in r.headers { headers.add(name: k, value: v) }
        if r.eventsFor == nil { headers.add(name: "Content-Length", value: "\(r.body.count)") }
        headers.add(name: "Connection", value: keepAlive ? "keep-alive" : "close")
        let status = HTTPResponseStatus(statusCode: r.status)
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: request.version, status: status, headers: headers))),
                      promise: nil)
        if let id = r.eventsFor {
            startEvents(context: context, id: id)
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
