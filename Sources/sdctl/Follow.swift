// Follow: waits for a job by reading its NDJSON event stream, drawing progress or echoing events, and
// reconnecting when the daemon restarts (its queue survives restarts, so the job goes on).

import Dispatch
import NIOHTTP1
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

struct JobFollower {
    let client: SDDClient
    /// Echo each event as one JSON line on stdout.
    let json: Bool
    /// Draw a progress bar on stderr (a terminal, and not --json).
    let progress: Bool
    /// How long to keep reconnecting, with backoff, once the daemon stops answering mid-wait: `--timeout`.
    var reconnectSeconds: Double { client.timeout }
    /// Keep this file replaced (atomically) by the job's latest latent preview.
    var previewPath: String? = nil

    /// Follows job `id` until it is finished, failed or canceled; returns the job as it ended.
    /// - daemonAnswered: the daemon already answered this run (it accepted the job), so a daemon that cannot be
    ///   reached at first is restarting, not absent: reconnect as after a lost stream.
    func follow(_ id: String, daemonAnswered: Bool = false) async throws -> Job {
        let interrupt = Self.onInterrupt(job: id, endLine: progress)
        defer { interrupt.cancel() }
        var bar = progress ? ProgressBar(job: id) : nil
        defer { bar?.finish() }
        var disconnectedSince: Double? = nil
        var connected = daemonAnswered
        var earlyEnds = 0
        var backoff = 0.25
        var firstLoss = ""
        while true {
            do {
                let events = "\(APIVersion.prefix)/jobs/\(id)/events"
                try await client.exchange(.GET, events, streaming: true) { status, body in
                    connected = true
                    guard status == 200 else {
                        throw SDDClient.apiError(status: status, body: try await body.collect(limit: 1 << 20))
                    }
                    _ = try await body.forEachLine { line in
                        let event: JobEvent
                        do {
                            event = try JSONDecoder().decode(JobEvent.self, from: Data(line))
                        } catch {
                            throw CLIError("unreadable event from the daemon: \(String(decoding: line, as: UTF8.self))")
                        }
                        disconnectedSince = nil
                        backoff = 0.25
                        if event.event == .heartbeat { return true }
                        if json { line.withUnsafeBytes { Output.write($0, to: 1) }; Output.out("\n") }
                        if let path = previewPath, event.event == .preview, let b64 = event.previewPNG {
                            guard let png = Data(base64Encoded: b64) else {
                                throw CLIError("unreadable preview from the daemon (step \(event.step ?? 0))")
                            }
                            try Output.writeFile(Array(png), to: path)
                        }
                        bar?.show(event)
                        return !event.isFinal
                    }
                }
                disconnectedSince = nil
                // A final event, or the stream ended early (the daemon stopping): the job itself says which.
                let job = try await client.json(.GET, "\(APIVersion.prefix)/jobs/\(id)", as: Job.self).value
                if job.state.isFinal { return job }
                earlyEnds += 1
                if earlyEnds > 100 { throw CLIError("the daemon keeps closing the event stream of job \(id)") }
            } catch {
                // Once the daemon has answered, a lost connection (killed, restarting) is waited out: its queue
                // survives, and so does this job. Errors the daemon reports are final.
                let lost = (error as? CLIError).map(\.isConnectionFailure) ?? true
                guard lost, connected else { throw error }
                let now = Self.now()
                let reason = (error as? CLIError)?.message ?? "lost the connection to \(client.socketPath): \(error)"
                if disconnectedSince == nil { firstLoss = reason }
                let since = disconnectedSince ?? now
                disconnectedSince = since
                if now - since > reconnectSeconds {
                    let last = reason == firstLoss ? "" : " (last: \(reason))"
                    throw CLIError("\(firstLoss); reconnecting for \(Format.seconds(now - since)) did not help\(last). "
                        + "Job \(id) may still run: sdctl wait \(id)")
                }
                try await Task.sleep(nanoseconds: UInt64(backoff * 1e9))
                backoff = min(backoff * 2, 2)
                continue
            }
            try await Task.sleep(nanoseconds: 1_000_000_000)
        }
    }

    static func now() -> Double { Date().timeIntervalSince1970 }

    /// Ctrl-C while waiting: say that the job goes on, and how to get at it, then exit 130 as a shell would.
    static func onInterrupt(job id: String, endLine: Bool) -> any DispatchSourceSignal {
        signal(SIGINT, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: SIGINT, queue: .global())
        source.setEventHandler {
            Output.error((endLine ? "\n" : "") + "sdctl: stopped waiting; job \(id) goes on "
                + "(sdctl wait \(id), sdctl cancel \(id))")
            exit(130)
        }
        source.resume()
        return source
    }
}

/// What a finished wait means for the exit status: 0 finished, 1 failed, 3 canceled.
func exitStatus(for job: Job) -> Int32 {
    switch job.state {
    case .finished: return ExitStatus.success
    case .canceled: return ExitStatus.canceled
    default: return ExitStatus.failure
    }
}

/// Reports a job that did not finish on stderr and returns the exit status; nil when it finished.
func reportUnfinished(_ job: Job) -> Int32? {
    switch job.state {
    case .finished:
        return nil
    case .canceled:
        Output.error("sdctl: job \(job.id) was canceled")
        return ExitStatus.canceled
    case .failed:
        let reason = job.error.map { "\($0.message) (\($0.code.rawValue))" } ?? "no reason given"
        Output.error("sdctl: error: job \(job.id) failed: \(reason)")
        return ExitStatus.failure
    case .queued, .running:
        Output.error("sdctl: error: job \(job.id) is still \(job.state.rawValue)")
        return ExitStatus.failure
    }
}
