// The systemd units and the install script: systemd-analyze accepts the units without a word, rates the
// service's sandbox at most 2.0, and scripts/install stages binaries, units and config under DESTDIR.

import Foundation
import XCTest

final class SystemdUnitTests: XCTestCase {
    static let units = ProcessRunner.repository.appendingPathComponent("systemd")

    var workDir: URL!

    override func setUpWithError() throws {
        workDir = FileManager.default.temporaryDirectory.appendingPathComponent("sdd-systemd-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: workDir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: workDir)
    }

    /// systemd-analyze (Debian package `systemd`), or a skip where it is absent.
    func systemdAnalyze() throws -> String {
        guard let path = ProcessRunner.which("systemd-analyze") else {
            throw XCTSkip("systemd-analyze is not installed (Debian: apt-get install systemd)")
        }
        return path
    }

    func unitText(_ name: String) throws -> String {
        try String(contentsOf: Self.units.appendingPathComponent(name), encoding: .utf8)
    }

    /// Copies the units into `dir`, with ExecStart pointing at `sdd` (verify checks the binary exists).
    func stageUnits(in dir: URL, replacing installed: String, with sdd: String,
                    from source: URL = SystemdUnitTests.units) throws {
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let service = try String(contentsOf: source.appendingPathComponent("sdd.service"), encoding: .utf8)
        XCTAssertTrue(service.contains("ExecStart=\(installed) serve"), "ExecStart no longer runs \(installed) serve")
        try service.replacingOccurrences(of: installed, with: sdd)
            .write(to: dir.appendingPathComponent("sdd.service"), atomically: true, encoding: .utf8)
        try FileManager.default.copyItem(at: source.appendingPathComponent("sdd.socket"),
                                         to: dir.appendingPathComponent("sdd.socket"))
    }

    func verify(_ dir: URL) throws -> ProcessRunner.Result {
        try ProcessRunner.run(try systemdAnalyze(), [
            "verify", "--man=no", dir.appendingPathComponent("sdd.socket").path,
            dir.appendingPathComponent("sdd.service").path,
        ])
    }

    func testVerifyAcceptsTheUnitsWithoutAnyOutput() throws {
        let staged = workDir.appendingPathComponent("units")
        try stageUnits(in: staged, replacing: "/usr/local/bin/sdd", with: GenerateCommandTests.binary.path)
        let result = try verify(staged)
        XCTAssertEqual(result.status, 0, result.output)
        XCTAssertEqual(result.output, "", "systemd-analyze verify said something")
    }

    func testVerifyWouldReportABadKey() throws {
        // The check above means something: verify does complain about a typo.
        let staged = workDir.appendingPathComponent("units")
        try stageUnits(in: staged, replacing: "/usr/local/bin/sdd", with: GenerateCommandTests.binary.path)
        let service = staged.appendingPathComponent("sdd.service")
        try (try String(contentsOf: service, encoding: .utf8))
            .replacingOccurrences(of: "NoNewPrivileges=", with: "NoNewPrivilege=")
            .write(to: service, atomically: true, encoding: .utf8)
        XCTAssertNotEqual(try verify(staged).output, "")
    }

    func testTheServiceSandboxIsRatedAtMost2() throws {
        let result = try ProcessRunner.run(try systemdAnalyze(), [
            "security", "--offline=true", "--no-pager", Self.units.appendingPathComponent("sdd.service").path,
        ])
        XCTAssertEqual(result.status, 0, result.output)
        guard let line = result.stdout.split(separator: "\n").first(where: { $0.contains("Overall exposure level") }),
              let score = line.split(separator: ":").last?.split(separator: " ").first.flatMap({ Double($0) })
        else { return XCTFail("no exposure level in: \(result.output)") }
        XCTAssertLessThanOrEqual(score, 2.0, String(line))
    }

    func testTheServiceIsANotifyServiceWithAWatchdogStartedByTheSocket() throws {
        let service = try unitText("sdd.service")
        for line in ["Type=notify", "NotifyAccess=main", "Requires=sdd.socket", "EnvironmentFile=-/etc/sdd/sdd.env",
                     "StateDirectory=sdd", "DynamicUser=yes", "RestrictAddressFamilies=AF_UNIX", "Restart=on-failure"] {
            XCTAssertTrue(service.split(separator: "\n").contains(Substring(line)), "sdd.service lacks \(line)")
        }
        for key in ["WatchdogSec=", "TimeoutStopSec=", "MemoryHigh=", "MemoryMax="] {
            XCTAssertTrue(service.contains("\n\(key)"), "sdd.service lacks \(key)")
        }
        // PrivateUsers would map every other uid to nobody, and SO_PEERCRED ownership with it.
        XCTAssertFalse(service.contains("\nPrivateUsers=yes"))
        let socket = try unitText("sdd.socket")
        for line in ["ListenStream=/run/sdd/sdd.sock", "SocketMode=0660", "SocketGroup=sdd", "Accept=no",
                     "WantedBy=sockets.target"] {
            XCTAssertTrue(socket.split(separator: "\n").contains(Substring(line)), "sdd.socket lacks \(line)")
        }
    }

    func testInstallStagesEverythingUnderDestdirAndKeepsAnExistingConfig() throws {
        let destdir = workDir.appendingPathComponent("stage")
        let env: [String: String?] = ["DESTDIR": destdir.path, "PREFIX": "/opt/sdd"]
        let install = ProcessRunner.repository.appendingPathComponent("scripts/install").path
        let first = try ProcessRunner.run(install, ["--bin-dir", ProcessRunner.binDirectory.path], environment: env)
        XCTAssertEqual(first.status, 0, first.output)
        XCTAssertTrue(first.stdout.contains("systemctl enable --now sdd.socket"), first.stdout)

        let fm = FileManager.default
        for exe in ["opt/sdd/bin/sdd", "opt/sdd/bin/sdctl"] {
            XCTAssertTrue(fm.isExecutableFile(atPath: destdir.appendingPathComponent(exe).path), exe)
        }
        for file in ["etc/systemd/system/sdd.service", "etc/systemd/system/sdd.socket", "etc/sdd/sdd.env",
                     "opt/sdd/lib/sysusers.d/sdd.conf", "opt/sdd/share/doc/sdd/README.md"] {
            XCTAssertTrue(fm.fileExists(atPath: destdir.appendingPathComponent(file).path), file)
        }
        let unitDir = destdir.appendingPathComponent("etc/systemd/system")
        let service = try String(contentsOf: unitDir.appendingPathComponent("sdd.service"), encoding: .utf8)
        XCTAssertTrue(service.contains("ExecStart=/opt/sdd/bin/sdd serve"), service)
        XCTAssertFalse(service.contains("/usr/local"), "the staged unit still names /usr/local")

        // The staged units verify too, once their ExecStart is mapped into DESTDIR.
        let mapped = workDir.appendingPathComponent("mapped")
        try stageUnits(in: mapped, replacing: "/opt/sdd/bin/sdd",
                       with: destdir.appendingPathComponent("opt/sdd/bin/sdd").path, from: unitDir)
        XCTAssertEqual(try verify(mapped).output, "")

        // A second install keeps the administrator's configuration.
        let config = destdir.appendingPathComponent("etc/sdd/sdd.env")
        try "SDD_MODEL=/srv/models/mine\n".write(to: config, atomically: true, encoding: .utf8)
        let second = try ProcessRunner.run(install, ["--no-build", "--bin-dir", ProcessRunner.binDirectory.path],
                                           environment: env)
        XCTAssertEqual(second.status, 0, second.output)
        XCTAssertEqual(try String(contentsOf: config, encoding: .utf8), "SDD_MODEL=/srv/models/mine\n")
    }

    func testInstallRefusesMissingBinaries() throws {
        let install = ProcessRunner.repository.appendingPathComponent("scripts/install").path
        let result = try ProcessRunner.run(install, ["--bin-dir", workDir.path],
                                           environment: ["DESTDIR": workDir.appendingPathComponent("stage").path])
        XCTAssertNotEqual(result.status, 0)
        XCTAssertTrue(result.stderr.contains("sdd is missing"), result.stderr)
    }
}
