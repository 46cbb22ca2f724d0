// sdctl: the tiny client of the sdd daemon. Talks HTTP/1.1 + JSON over the daemon's Unix socket and links no
// inference code, so it builds and starts fast.

import ArgumentParser
import SDDAPI

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Exit statuses (documented in `sdctl --help`).
enum ExitStatus {
    static let success: Int32 = 0
    /// The job failed, or a request or the connection did.
    static let failure: Int32 = 1
    /// Bad command line, or a job the daemon refused as invalid or too large for it (HTTP 400, 413).
    static let usage: Int32 = 2
    /// The job was canceled.
    static let canceled: Int32 = 3
}

/// An error sdctl reports as "sdctl: error: MESSAGE" and exits with `exitStatus`.
struct CLIError: Error, CustomStringConvertible {
    var message: String
    var exitStatus: Int32 = ExitStatus.failure
    /// The socket did not answer (the daemon may be restarting).
    var isConnectionFailure = false
    /// The HTTP status of the daemon's answer, when the error is one the daemon reported.
    var httpStatus: Int?

    init(_ message: String, exitStatus: Int32 = ExitStatus.failure) {
        self.message = message
        self.exitStatus = exitStatus
    }

    /// An error the daemon reported with `status`: "<message> (<code>)".
    init(api error: APIError, status: Int) {
        self.init("\(error.message) (\(error.code.rawValue))")
        httpStatus = status
    }

    var description: String { message }
}

struct GlobalOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp(
        "The daemon's socket (default: $SDD_SOCKET, else \(APIVersion.defaultSocketPath)).", valueName: "path"))
    var socket: String?

    @Option(name: .long, help: ArgumentHelp(
        "Seconds to wait for the daemon to answer a request, and for it to come back while following a job "
            + "(default 30). Waiting for a job has no limit: its event stream carries a heartbeat, and silence "
            + "for \(Int(SDDClient.silentHeartbeats)) heartbeats counts as a daemon that stopped answering.",
        valueName: "seconds"))
    var timeout: Double = SDDClient.defaultTimeout

    mutating func validate() throws {
        guard timeout.isFinite, timeout >= 0.1, timeout <= 86_400 else {
            throw ValidationError("--timeout must be between 0.1 and 86400 seconds")
        }
    }

    var client: SDDClient {
        let path = socket
            ?? ProcessEnvironment.get(APIVersion.socketEnvironmentVariable).flatMap { $0.isEmpty ? nil : $0 }
            ?? APIVersion.defaultSocketPath
        return SDDClient(socketPath: path, timeout: timeout)
    }
}

struct SDCtl: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sdctl",
        abstract: "Queue Stable Diffusion jobs on the sdd daemon and fetch their images.",
        discussion: """
            sdctl talks to `sdd serve` over its Unix socket (default $SDD_SOCKET, else \
            \(APIVersion.defaultSocketPath)); members of the socket's group (sdd) may use it. \
            A job belongs to the user who submitted it: only that user or root can see, wait on, fetch or cancel it.

            EXIT STATUS
              0  success
              1  the job failed, or an error (daemon not running, bad request, …)
              2  usage error (bad command line), or the daemon refused the job as invalid or too large for
                 it (HTTP 400 or 413, e.g. exceeds_memory_budget); its reason is printed
              3  the job was canceled

            EXAMPLES
              sdctl generate --steps 30 --seed 42 -o cat.png "a photo of a cat"
              id=$(sdctl generate --no-wait "a lighthouse at dusk"); sdctl wait $id && sdctl fetch $id -o lighthouse.png
              sdctl jobs
            """,
        subcommands: [Generate.self, Jobs.self, Status.self, Wait.self, Fetch.self, Cancel.self, Models.self,
                      Health.self])

    @OptionGroup var global: GlobalOptions
}

@main
enum Main {
    static func main() async {
        let status: Int32
        do {
            var command = try SDCtl.parseAsRoot()
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
            status = ExitStatus.success
        } catch {
            status = report(error)
        }
        exit(status)
    }

    /// Prints what went wrong and returns the exit status for it.
    static func report(_ error: any Error) -> Int32 {
        switch error {
        case let error as CLIError:
            Output.error("sdctl: error: \(error.message)")
            return error.exitStatus
        case let error as ExitCode:
            return error.rawValue
        default:
            // ArgumentParser's own errors: help and version exit 0, everything else is a usage error.
            let code = SDCtl.exitCode(for: error)
            let message = SDCtl.fullMessage(for: error)
            if code == .success {
                Output.out(message + "\n")
                return ExitStatus.success
            }
            if code == .validationFailure {
                Output.error(message)
                return ExitStatus.usage
            }
            Output.error("sdctl: error: \(message)")
            return ExitStatus.failure
        }
    }
}

/// Reads the environment without Foundation's ProcessInfo.
enum ProcessEnvironment {
    static func get(_ name: String) -> String? {
        getenv(name).map { String(cString: $0) }
    }
}
