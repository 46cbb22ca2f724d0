// ProcessRunner: runs a command to completion (or starts one in the background) for the end-to-end tests of
// the service: systemd-analyze, scripts/install, sdctl and `sdd serve`.

import Foundation
import XCTest

enum ProcessRunner {
    struct Result {
        let status: Int32
        let stdout: String
        let stderr: String
        let stdoutData: Data
        var output: String { stdout + stderr }
    }

    /// The repository root (this file is Tests/SDDTests/ProcessRunner.swift).
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    /// Where SwiftPM put the binaries of this build (sdd, sdctl).
    static var binDirectory: URL { GenerateCommandTests.binary.deletingLastPathComponent() }

    /// `name` found on $PATH, or nil.
    static func which(_ name: String) -> String? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin"
        for dir in path.split(separator: ":") {
            let candidate = "\(dir)/\(name)"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return nil
    }

    /// Runs `executable` with `arguments` to the end. `environment` adds to (or, with nil values, removes from)
    /// this process's environment.
    static func run(_ executable: String, _ arguments: [String], environment: [String: String?] = [:],
                    currentDirectory: URL? = nil) throws -> Result {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        var env = ProcessInfo.processInfo.environment
        for (k, v) in environment { env[k] = v }
        process.environment = env
        if let currentDirectory { process.currentDirectoryURL = currentDirectory }
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = FileHandle.nullDevice
        try process.run()
        // Read both pipes concurrently so neither fills up and blocks the child.
        nonisolated(unsafe) var errData = Data()
        let errDone = DispatchSemaphore(value: 0)
        DispatchQueue.global().async {
            errData = err.fileHandleForReading.readDataToEndOfFile()
            errDone.signal()
        }
        let outData = out.fileHandleForReading.readDataToEndOfFile()
        errDone.wait()
        process.waitUntilExit()
        return Result(status: process.terminationStatus, stdout: String(decoding: outData, as: UTF8.self),
                      stderr: String(decoding: errData, as: UTF8.self), stdoutData: outData)
    }
}
