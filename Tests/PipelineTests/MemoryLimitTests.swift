// MemoryLimit: the default memory budget read from fake /proc and /sys trees — cgroup v2 and v1 limits of the
// process's cgroup and the ones above it, MemAvailable otherwise — and `--memory-budget` resolved from it.

import Foundation
import Pipeline
import XCTest

final class MemoryLimitTests: XCTestCase {
    var root: URL!

    override func setUpWithError() throws {
        root = FileManager.default.temporaryDirectory.appendingPathComponent("sdd-memlimit-\(UUID().uuidString)")
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: root) }

    func file(_ path: String, _ text: String) throws {
        let url = root.appendingPathComponent(String(path.dropFirst()))
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try text.write(to: url, atomically: false, encoding: .utf8)
    }

    let meminfo = "MemTotal:       24000000 kB\nMemFree:         1000000 kB\nMemAvailable:   20000000 kB\n"
    let v2Mount = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n"
    let v1Mounts = """
        31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
        35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
        41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw

        """

    func testCgroupV2MemoryMaxOfTheProcessesCgroup() throws {
        try file("/proc/self/mountinfo", v2Mount)
        try file("/proc/self/cgroup", "0::/system.slice/sdd.service\n")
        try file("/sys/fs/cgroup/system.slice/sdd.service/memory.max", "314572800\n")
        try file("/sys/fs/cgroup/system.slice/sdd.service/memory.high", "max\n")
        try file("/sys/fs/cgroup/system.slice/memory.max", "max\n")
        try file("/proc/meminfo", meminfo)
        let limit = try XCTUnwrap(MemoryLimit.detect(root: root))
        XCTAssertEqual(limit.bytes, 300 << 20)
        XCTAssertEqual(limit.source, "cgroup v2 memory.max of /system.slice/sdd.service")
        XCTAssertEqual(limit.budget, (300 << 20) - (300 << 20) / 8, "an eighth kept back")
    }

    func testTheTightestOfMemoryHighAndAParentsMemoryMaxWins() throws {
        try file("/proc/self/mountinfo", v2Mount)
        try file("/proc/self/cgroup", "0::/a/b\n")
        try file("/sys/fs/cgroup/a/b/memory.max", "1073741824\n")
        try file("/sys/fs/cgroup/a/b/memory.high", "805306368\n")
        try file("/sys/fs/cgroup/a/memory.max", "536870912\n")
        try file("/proc/meminfo", meminfo)
        let limit = try XCTUnwrap(MemoryLimit.detect(root: root))
        XCTAssertEqual(limit.bytes, 512 << 20)
        XCTAssertEqual(limit.source, "cgroup v2 memory.max of /a")
    }

    func testCgroupV1LimitInAHybridHierarchy() throws {
        try file("/proc/self/mountinfo", v1Mounts)
        try file("/proc/self/cgroup", "9:name=systemd:/\n4:memory:/process_api/x\n0::/\n")
        try file("/sys/fs/cgroup/memory/process_api/x/memory.limit_in_bytes", "314572800\n")
        try file("/sys/fs/cgroup/memory/process_api/memory.limit_in_bytes", "9223372036854771712\n")
        try file("/sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712\n")
        try file("/proc/meminfo", meminfo)
        let limit = try XCTUnwrap(MemoryLimit.detect(root: root))
        XCTAssertEqual(limit.bytes, 300 << 20)
        XCTAssertEqual(limit.source, "cgroup v1 memory.limit_in_bytes of /process_api/x")
    }

    func testAMountedSubtreeIsResolvedAgainstItsMountRoot() throws {
        // In a container the cgroup namespace's root may be mounted: mountinfo's root field says which part.
        try file("/proc/self/mountinfo", "30 23 0:26 /kubepods/pod1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n")
        try file("/proc/self/cgroup", "0::/kubepods/pod1/c1\n")
        try file("/sys/fs/cgroup/c1/memory.max", "209715200\n")
        try file("/proc/meminfo", meminfo)
        XCTAssertEqual(MemoryLimit.detect(root: root)?.bytes, 200 << 20)
    }

    func testWithoutACgroupLimitMemAvailableIsTheLimit() throws {
        try file("/proc/self/mountinfo", v2Mount)
        try file("/proc/self/cgroup", "0::/user.slice\n")
        try file("/sys/fs/cgroup/user.slice/memory.max", "max\n")
        try file("/proc/meminfo", meminfo)
        let limit = try XCTUnwrap(MemoryLimit.detect(root: root))
        XCTAssertEqual(limit.bytes, 20_000_000 * 1024)
        XCTAssertEqual(limit.source, "MemAvailable")
    }

    func testACgroupLimitAboveMemAvailableGivesMemAvailable() throws {
        try file("/proc/self/mountinfo", v2Mount)
        try file("/proc/self/cgroup", "0::/big\n")
        try file("/sys/fs/cgroup/big/memory.max", "\(64 << 30)\n")
        try file("/proc/meminfo", meminfo)
        XCTAssertEqual(MemoryLimit.detect(root: root)?.source, "MemAvailable")
    }

    func testNothingReadableGivesNoLimit() {
        XCTAssertNil(MemoryLimit.detect(root: root))
    }

    func testTheBudgetOptionResolvesSizesNoneAndTheDefault() throws {
        try file("/proc/self/mountinfo", v2Mount)
        try file("/proc/self/cgroup", "0::/s\n")
        try file("/sys/fs/cgroup/s/memory.max", "314572800\n")
        let auto = try MemoryBudgetOption.resolve(nil, root: root)
        XCTAssertEqual(auto.bytes, (300 << 20) * 7 / 8)
        XCTAssertTrue(auto.explanation.contains("cgroup v2 memory.max of /s"), auto.explanation)
        XCTAssertNil(try MemoryBudgetOption.resolve("none", root: root).bytes)
        XCTAssertEqual(try MemoryBudgetOption.resolve("200M", root: root).bytes, 200 << 20)
        XCTAssertThrowsError(try MemoryBudgetOption.resolve("lots", root: root))
        // A small limit keeps at least 32 MiB back.
        try file("/sys/fs/cgroup/s/memory.max", "\(100 << 20)\n")
        XCTAssertEqual(try MemoryBudgetOption.resolve(nil, root: root).bytes, 68 << 20)
    }
}
