// ServeTestSupport: a running `sdd serve` process and a tiny blocking HTTP client over its Unix socket, for the
// daemon's end-to-end tests (ServeTests). Names start with Serve so they stay clear of other test helpers.

import Foundation
import XCTest

/// `sdd serve` (or any command) as a background process, stderr captured to a file.
final class ServeProcess {
    let process = Process()
    let log: URL

    /// The sdd binary SwiftPM built next to the test bundle.
    static var sddBinary: URL {
        var dir = Bundle.main.bundleURL
        if dir.pathExtension == "xctest" { dir.deleteLastPathComponent() }
        for candidate in [dir, Bundle(for: ServeProcess.self).bundleURL.deletingLastPathComponent()] {
            let url = candidate.appendingPathComponent("sdd")
            if FileManager.default.isExecutableFile(atPath: url.path) { return url }
        }
        return dir.appendingPathComponent("sdd")
    }

    /// Variables a test's daemon must not inherit from the test process (the model, and systemd's own protocol
    /// variables, which a test sets itself when it is about them); everything else is inherited.
    static let clearedVariables: Set<String> = ["SDD_MODEL", "SDD_VAE", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID",
                                                "LISTEN_FDS", "LISTEN_PID"]

    init(executable: URL = ServeProcess.sddBinary, _ arguments: [String], environment: [String: String] = [:], log: URL) throws {
        self.log = log
        process.executableURL = executable
        process.arguments = arguments
        var env = ProcessInfo.processInfo.environment
        for key in Self.clearedVariables { env[key] = nil }
        for (k, v) in environment { env[k] = v }
        process.environment = env
        FileManager.default.createFile(atPath: log.path, contents: nil)
        let handle = try FileHandle(forWritingTo: log)
        process.standardError = handle
        process.standardOutput = handle
        try process.run()
    }

    var pid: Int32 { process.processIdentifier }
    var stderr: String { (try? String(contentsOf: log, encoding: .utf8)) ?? "" }

    func signal(_ sig: Int32) { kill(process.processIdentifier, sig) }

    /// Waits for exit; nil if still running after `timeout` seconds.
    func waitExit(timeout: Double) -> Int32? {
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning, Date() < deadline { usleep(20_000) }
        if process.isRunning { return nil }
        return process.terminationStatus
    }

    /// Kills it if still running (tests end with no stray daemons).
    func stop() {
        if process.isRunning {
            signal(SIGKILL)
            _ = waitExit(timeout: 10)
        }
    }

    /// VmRSS in bytes from /proc/PID/status.
    var residentBytes: Int {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return 0 }
        for line in text.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            return (Int(line.split(separator: " ", omittingEmptySubsequences: true)[1]) ?? 0) * 1024
        }
        return 0
    }
}

struct ServeHTTPResult {
    var status: Int
    var headers: [String: String]
    var body: [UInt8]
    var text: String { String(decoding: body, as: UTF8.self) }
    var object: [String: Any] { ((try? JSONSerialization.jsonObject(with: Data(body))) as? [String: Any]) ?? [:] }
}

struct ServeClientError: Error, CustomStringConvertible {
    let description: String
}

/// One request per connection over a Unix socket; `Connection: close`; chunked bodies decoded.
enum ServeHTTP {
    static func connect(_ path: String, timeout: Double = 20) throws -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw ServeClientError(description: "socket: \(errno)") }
        var tv = timeval(tv_sec: Int(timeout), tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in path.utf8.enumerated() { raw[i] = b } }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else {
            let e = errno
            close(fd)
            throw ServeClientError(description: "connect \(path): \(String(cString: strerror(e)))")
        }
        return fd
    }

    static func request(_ socketPath: String, _ method: String, _ path: String, json: [String: Any]? = nil,
                        rawBody: [UInt8]? = nil, timeout: Double = 20) throws -> ServeHTTPResult {
        let body = try rawBody ?? json.map { Array(try JSONSerialization.data(withJSONObject: $0)) }
        let fd = try connect(socketPath, timeout: timeout)
        defer { close(fd) }
        var head = "\(method) \(path) HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        if let body { head += "Content-Type: application/json\r\nContent-Length: \(body.count)\r\n" }
        let bytes = Array((head + "\r\n").utf8) + (body ?? [])
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            // A server may answer early (413) and stop reading: the answer is still there to read.
            guard n > 0 else { break }
            sent += n
        }
        var raw: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { break }
            raw += buf[0..<n]
        }
        return try parse(raw)
    }

    /// Sends `bytes` as they are (the server may stop reading early), then reads until the server closes.
    /// `closed` is true when it did (end of file, or a reset because the server dropped unread input), false
    /// when `timeout` seconds passed with the connection still open.
    static func sendRaw(_ socketPath: String, _ bytes: [UInt8], timeout: Double) throws -> (raw: [UInt8], closed: Bool) {
        let fd = try connect(socketPath, timeout: timeout)
        defer { close(fd) }
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { break }
            sent += n
        }
        var raw: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n > 0 {
                raw += buf[0..<n]
                continue
            }
            return (raw, n == 0 || errno == ECONNRESET)
        }
    }

    static func parse(_ raw: [UInt8]) throws -> ServeHTTPResult {
        guard let end = find([13, 10, 13, 10], in: raw, from: 0) else {
            throw ServeClientError(description: "incomplete response (\(raw.count) bytes)")
        }
        var lines = String(decoding: raw[0..<end], as: UTF8.self).components(separatedBy: "\r\n")
        let statusLine = lines.removeFirst().split(separator: " ")
        guard statusLine.count >= 2, let status = Int(statusLine[1]) else { throw ServeClientError(description: "bad status line") }
        var headers: [String: String] = [:]
        for line in lines {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        var body = Array(raw[(end + 4)...])
        if headers["transfer-encoding"]?.lowercased() == "chunked" {
            var out: [UInt8] = []
            var i = 0
            while let lineEnd = find([13, 10], in: body, from: i),
                  let size = Int(String(decoding: body[i..<lineEnd], as: UTF8.self), radix: 16), size > 0,
                  lineEnd + 2 + size <= body.count {
                out += body[(lineEnd + 2)..<(lineEnd + 2 + size)]
                i = lineEnd + 4 + size
            }
            body = out
        }
        return ServeHTTPResult(status: status, headers: headers, body: body)
    }

    static func find(_ needle: [UInt8], in hay: [UInt8], from: Int) -> Int? {
        guard hay.count >= needle.count, from <= hay.count - needle.count else { return nil }
        for i in from...(hay.count - needle.count) where hay[i] == needle[0] && Array(hay[i..<(i + needle.count)]) == needle {
            return i
        }
        return nil
    }

    /// Polls until `condition` holds or `timeout` seconds pass; returns whether it held.
    static func waitUntil(timeout: Double, interval: Double = 0.02, _ condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if condition() { return true }
            usleep(UInt32(interval * 1_000_000))
        }
        return condition()
    }
}
