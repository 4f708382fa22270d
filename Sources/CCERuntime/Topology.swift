// Topology: what the tile planner needs to know about the machine, from hwloc.

import CHwloc

/// Cache sizes and core counts of this machine.
public struct Topology: Sendable, CustomStringConvertible {
    public var l1Bytes: Int
    public var l2Bytes: Int
    public var l3Bytes: Int
    public var cores: Int
    public var processingUnits: Int
    public var numaNodes: Int
    /// "hwloc" when read from hwloc, "defaults" when hwloc could not be read.
    public var source: String

    /// Reads the topology once per process.
    public static let current: Topology = detect()

    static func detect() -> Topology {
        var t = Topology(l1Bytes: 32 << 10, l2Bytes: 512 << 10, l3Bytes: 8 << 20,
                         cores: Workers.availableCPUs, processingUnits: Workers.availableCPUs,
                         numaNodes: 1, source: "defaults")
        var topo: hwloc_topology_t?
        guard hwloc_topology_init(&topo) == 0, let topo else { return t }
        defer { hwloc_topology_destroy(topo) }
        guard hwloc_topology_load(topo) == 0 else { return t }
        var size: UInt64 = 0
        if cce_hwloc_cache_size(topo, 1, &size) == 0, size > 0 { t.l1Bytes = Int(size) }
        if cce_hwloc_cache_size(topo, 2, &size) == 0, size > 0 { t.l2Bytes = Int(size) }
        if cce_hwloc_cache_size(topo, 3, &size) == 0, size > 0 { t.l3Bytes = Int(size) }
        let cores = Int(cce_hwloc_count(topo, HWLOC_OBJ_CORE))
        let pus = Int(cce_hwloc_count(topo, HWLOC_OBJ_PU))
        let nodes = Int(cce_hwloc_count(topo, HWLOC_OBJ_NUMANODE))
        if cores > 0 { t.cores = cores }
        if pus > 0 { t.processingUnits = pus }
        if nodes > 0 { t.numaNodes = nodes }
        t.source = "hwloc"
        return t
    }

    public var description: String {
        "L1d \(l1Bytes >> 10) KiB, L2 \(l2Bytes >> 10) KiB, L3 \(l3Bytes >> 20) MiB, "
            + "\(cores) cores, \(processingUnits) PUs, \(numaNodes) NUMA node(s) [\(source)]"
    }
}
