// UnixHTTPClient: a deliberately small blocking HTTP/1.1 client over a Unix socket for tests (one request per
// connection, Connection: close, chunked bodies decoded), with raw access for slow and malformed clients.

import Foundation

struct HTTPResult {
    var status: Int
    var headers: [String: String]
    var body: [UInt8]
    var text: String { String(decoding: body, as: UTF8.self) }
    func json<T: Decodable>(_ type: T.Type) throws -> T { try JSONDecoder().decode(type, from: Data(body)) }
}

struct ClientError: Error, CustomStringConvertible {
    let description: String
}

enum UnixHTTPClient {
    /// A connected socket with receive/send timeouts of `timeout` seconds.
    static func connect(_ path: String, timeout: Double = 20) throws -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw ClientError(description: "socket: \(errno)") }
        var tv = timeval(tv_sec: Int(timeout), tv_usec: Int((timeout - floor(timeout)) * 1_000_000))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in bytes.enumerated() { raw[i] = b } }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else {
            let e = errno
            close(fd)
            throw ClientError(description: "connect \(path): \(String(cString: strerror(e)))")
        }
        return fd
    }

    static func send(_ fd: Int32, _ bytes: [UInt8]) throws {
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw ClientError(description: "send: \(String(cString: strerror(errno)))") }
            sent += n
        }
    }

    /// Reads until the peer closes (or the timeout); returns what arrived.
    static func readAll(_ fd: Int32) -> [UInt8] {
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { break }
            out += buf[0..<n]
        }
        return out
    }

    /// Waits up to `timeout` seconds for the peer to close the connection; returns whether it did and what
    /// arrived before it. Waits on the event (poll, then recv), not on a clock.
    static func waitForClose(_ fd: Int32, timeout: Double) -> (closed: Bool, bytes: [UInt8]) {
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            let left = deadline.timeIntervalSinceNow
            if left <= 0 { return (false, out) }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ready = poll(&p, 1, Int32(min(left, 1) * 1000))
            if ready < 0 && errno != EINTR { return (false, out) }
            if ready <= 0 { continue }
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if n == 0 { return (true, out) }
            if n < 0 {
                if errno == EAGAIN || errno == EINTR { continue }
                return (true, out)  // ECONNRESET: closed too
            }
            out += buf[0..<n]
        }
    }

    static func request(_ socketPath: String, _ method: String, _ path: String, body: [UInt8]? = nil,
                        headers: [String: String] = [:], timeout: Double = 20) throws -> HTTPResult {
        let fd = try connect(socketPath, timeout: timeout)
        defer { close(fd) }
        var head = "\(method) \(path) HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        for (k, v) in headers { head += "\(k): \(v)\r\n" }
        if let body { head += "Content-Length: \(body.count)\r\nContent-Type: application/json\r\n" }
        head += "\r\n"
        // A server may answer early (413) and stop reading: the answer is still there to read.
        try? send(fd, Array(head.utf8) + (body ?? []))
        return try parse(readAll(fd))
    }

    static func json<T: Encodable>(_ value: T) -> [UInt8] { Array((try? JSONEncoder().encode(value)) ?? Data()) }

    static func parse(_ raw: [UInt8]) throws -> HTTPResult {
        guard let end = find([13, 10, 13, 10], in: raw, from: 0) else {
            throw ClientError(description: "no complete response head in \(raw.count) bytes: \(String(decoding: raw, as: UTF8.self))")
        }
        var lines = String(decoding: raw[0..<end], as: UTF8.self).components(separatedBy: "\r\n")
        // Skip interim 100 Continue responses.
        while lines.first?.contains(" 100 ") == true, let blank = lines.firstIndex(of: "") { lines.removeFirst(blank + 1) }
        let statusLine = lines.removeFirst().split(separator: " ")
        guard statusLine.count >= 2, let status = Int(statusLine[1]) else { throw ClientError(description: "bad status line") }
        var headers: [String: String] = [:]
        for line in lines {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        var body = Array(raw[(end + 4)...])
        if headers["transfer-encoding"]?.lowercased() == "chunked" { body = dechunk(body) }
        return HTTPResult(status: status, headers: headers, body: body)
    }

    static func dechunk(_ data: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        var i = 0
        while let lineEnd = find([13, 10], in: data, from: i) {
            guard let size = Int(String(decoding: data[i..<lineEnd], as: UTF8.self).split(separator: ";")[0], radix: 16),
                  size > 0, lineEnd + 2 + size <= data.count else { break }
            out += data[(lineEnd + 2)..<(lineEnd + 2 + size)]
            i = lineEnd + 2 + size + 2
        }
        return out
    }

    static func find(_ needle: [UInt8], in hay: [UInt8], from: Int) -> Int? {
        guard hay.count >= needle.count, from <= hay.count - needle.count else { return nil }
        for i in from...(hay.count - needle.count) where hay[i] == needle[0] && Array(hay[i..<(i + needle.count)]) == needle {
            return i
        }
        return nil
    }
}
