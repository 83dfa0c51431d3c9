package node

import (
	"github.com/cockroachdb/pebble/v2"
	"github.com/prometheus/client_golang/prometheus"
)

// pebbleCollector exports the Pebble metrics of the node's two databases,
// the store and the raft log (label db), read when /metrics is scraped:
// disk use, L0 shape (the read-amplification and write-stall early
// warning), compactions and their debt, flushes, memtables, the block
// cache and write stalls.
type pebbleCollector struct {
	dbs map[string]func() (*pebble.Metrics, uint64)

	diskUsage, l0Files, l0Sublevels, compactionDebt, memtable, cacheSize *prometheus.Desc
	compactions, flushes, cacheHits, cacheMisses, stalls                 *prometheus.Desc
}

func newPebbleCollector(dbs map[string]func() (*pebble.Metrics, uint64)) *pebbleCollector {
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, []string{"db"}, nil)
	}
	return &pebbleCollector{
		dbs:            dbs,
		diskUsage:      d("scope_pebble_disk_usage_bytes", "Bytes the database uses on disk: tables, WAL, manifests."),
		l0Files:        d("scope_pebble_l0_files", "Tables in level 0; many make reads slower and lead to write stalls."),
		l0Sublevels:    d("scope_pebble_l0_sublevels", "Level 0 sublevels (read amplification of L0); Pebble stalls writes when they pile up."),
		compactionDebt: d("scope_pebble_compaction_debt_bytes", "Estimated bytes compactions must rewrite to bring the LSM back to shape."),
		memtable:       d("scope_pebble_memtable_bytes", "Bytes allocated by memtables and large batches."),
		cacheSize:      d("scope_pebble_block_cache_bytes", "Bytes in the block cache."),
		compactions:    d("scope_pebble_compactions_total", "Compactions since the database opened."),
		flushes:        d("scope_pebble_flushes_total", "Memtable flushes since the database opened."),
		cacheHits:      d("scope_pebble_block_cache_hits_total", "Block cache hits since the database opened."),
		cacheMisses:    d("scope_pebble_block_cache_misses_total", "Block cache misses since the database opened."),
		stalls:         d("scope_pebble_write_stalls_total", "Write stalls since the database opened: Pebble delayed writes while compactions caught up."),
	}
}

func (c *pebbleCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.diskUsage, c.l0Files, c.l0Sublevels, c.compactionDebt, c.memtable,
		c.cacheSize, c.compactions, c.flushes, c.cacheHits, c.cacheMisses, c.stalls} {
		ch <- d
	}
}

func (c *pebbleCollector) Collect(ch chan<- prometheus.Metric) {
	for db, read := range c.dbs {
		m, stalls := read()
		g := func(d *prometheus.Desc, v float64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, db)
		}
		n := func(d *prometheus.Desc, v float64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, db)
		}
		g(c.diskUsage, float64(m.DiskSpaceUsage()))
		g(c.l0Files, float64(m.Levels[0].TablesCount))
		g(c.l0Sublevels, float64(m.Levels[0].Sublevels))
		g(c.compactionDebt, float64(m.Compact.EstimatedDebt))
		g(c.memtable, float64(m.MemTable.Size))
		g(c.cacheSize, float64(m.BlockCache.Size))
		n(c.compactions, float64(m.Compact.Count))
		n(c.flushes, float64(m.Flush.Count))
		n(c.cacheHits, float64(m.BlockCache.Hits))
		n(c.cacheMisses, float64(m.BlockCache.Misses))
		n(c.stalls, float64(stalls))
	}
}
