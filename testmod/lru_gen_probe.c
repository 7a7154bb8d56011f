// SPDX-License-Identifier: GPL-2.0
/*
 * lru_gen_probe: kretprobes on the MMU notifier aging entry points, for the
 * selftests and the benchmark of mglru-secondary.  Not part of the series.
 *
 * mode=time (default): how long MGLRU spends asking secondary MMUs per PTE
 *	table, i.e. inside the walk's PTE lock.  Every call of
 *	__mmu_notifier_test_clear_young_fast_only() (the series: one per
 *	batch) and __mmu_notifier_clear_young() (6.12: one per page) is timed;
 *	the calls one CPU makes back to back for the same mm and 2 MiB-aligned
 *	range (one PTE table; the PTE lock disables preemption, so they cannot
 *	interleave with another walk's on that CPU) are summed into one sample.
 *	debugfs lru_gen_probe/hold_ns lists the samples, one per line:
 *	"<ns> <calls> <op>", op "fast" if the table had a fast-only call (its
 *	clear_young() fallback is in the same sample), else "page"; "clear" to it
 *	empties the buffer.  lru_gen_probe/stats has the totals.
 * mode=shift: a fault injection for lru_gen_exact_test.  Every fast-only
 *	answer is shifted by one page (the young bit of page i moves to page
 *	i + 1 of the batch), as an off-by-one in a secondary MMU or in the
 *	walk's use of the answer would.  The exact test must catch it.
 *
 * Only the series' kernel has the fast-only entry point; on any other
 * kernel mode=time probes clear_young() alone and mode=shift fails to load.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/bitmap.h>
#include <linux/debugfs.h>
#include <linux/kprobes.h>
#include <linux/ktime.h>
#include <linux/module.h>
#include <linux/percpu.h>
#include <linux/seq_file.h>
#include <linux/spinlock.h>
#include <linux/string.h>
#include <linux/uaccess.h>
#include <linux/vmalloc.h>

#define FAST_FN		"__mmu_notifier_test_clear_young_fast_only"
#define PAGE_FN		"__mmu_notifier_clear_young"
/* The fast-only op's batch limit (MMU_NOTIFIER_YOUNG_BATCH in the series). */
#define MAX_BATCH	512
/* Samples kept: enough for a pass over 32 GiB of 4 KiB pages. */
#define NR_SAMPLES	(1 << 14)
/* Calls for the same table further apart than this are two samples. */
#define GAP_NS		(10 * NSEC_PER_MSEC)

static char *mode = "time";
module_param(mode, charp, 0444);
MODULE_PARM_DESC(mode, "time (per-table notifier time) or shift (fault injection)");

enum op { OP_FAST, OP_PAGE };

struct sample {
	u64 ns;
	u32 calls;
	u32 op;
};

/* The table one CPU is currently summing calls for. */
struct cpu_acc {
	raw_spinlock_t lock;	/* this CPU's handlers vs a reader's flush */
	struct mm_struct *mm;
	unsigned long table;
	u64 last_ret;
	struct sample cur;
};

static DEFINE_PER_CPU(struct cpu_acc, acc);
static DEFINE_RAW_SPINLOCK(ring_lock);
static struct sample *ring;
static unsigned int ring_len;
static u64 dropped;
static atomic64_t shifted = ATOMIC64_INIT(0);
static struct dentry *dir;

/* Per call: what the entry handler saw. */
struct call {
	struct mm_struct *mm;
	unsigned long start, end;
	unsigned long *bitmap;
	u64 t0;
};

static void push(const struct sample *s)
{
	unsigned long flags;

	raw_spin_lock_irqsave(&ring_lock, flags);
	if (ring_len < NR_SAMPLES)
		ring[ring_len++] = *s;
	else
		dropped++;
	raw_spin_unlock_irqrestore(&ring_lock, flags);
}

static int entry(struct kretprobe_instance *ri, struct pt_regs *regs)
{
	struct call *c = (struct call *)ri->data;

	c->mm = (struct mm_struct *)regs_get_kernel_argument(regs, 0);
	c->start = regs_get_kernel_argument(regs, 1);
	c->end = regs_get_kernel_argument(regs, 2);
	c->bitmap = (unsigned long *)regs_get_kernel_argument(regs, 3);
	c->t0 = ktime_get_ns();
	return 0;
}

static void account(struct kretprobe_instance *ri, enum op op)
{
	struct call *c = (struct call *)ri->data;
	u64 now = ktime_get_ns();
	unsigned long table = c->start & PMD_MASK;
	struct cpu_acc *a;
	unsigned long flags;

	/* Return handlers run with preemption disabled; irqs may nest. */
	a = this_cpu_ptr(&acc);
	raw_spin_lock_irqsave(&a->lock, flags);
	/* A table's fast call and its clear_young() fallback are one sample. */
	if (a->cur.calls &&
	    (a->mm != c->mm || a->table != table ||
	     c->t0 - a->last_ret > GAP_NS)) {
		push(&a->cur);
		a->cur.calls = 0;
	}
	if (!a->cur.calls) {
		a->mm = c->mm;
		a->table = table;
		a->cur.ns = 0;
		a->cur.op = op;
	} else if (op == OP_FAST) {
		a->cur.op = OP_FAST;
	}
	a->cur.ns += now - c->t0;
	a->cur.calls++;
	a->last_ret = now;
	raw_spin_unlock_irqrestore(&a->lock, flags);
}

static int fast_ret(struct kretprobe_instance *ri, struct pt_regs *regs)
{
	account(ri, OP_FAST);
	return 0;
}

static int page_ret(struct kretprobe_instance *ri, struct pt_regs *regs)
{
	account(ri, OP_PAGE);
	return 0;
}

static int shift_ret(struct kretprobe_instance *ri, struct pt_regs *regs)
{
	struct call *c = (struct call *)ri->data;
	unsigned long nr = (c->end - c->start) >> PAGE_SHIFT;

	/* The series rejects other batches before answering: leave them. */
	if (nr < 2 || nr > MAX_BATCH || !PAGE_ALIGNED(c->start))
		return 0;
	bitmap_shift_left(c->bitmap, c->bitmap, 1, nr);
	/* The shift carries page nr - 1 past the batch: drop it there. */
	if (nr % BITS_PER_LONG)
		c->bitmap[BIT_WORD(nr)] &= BITMAP_LAST_WORD_MASK(nr);
	atomic64_inc(&shifted);
	return 0;
}

static struct kretprobe fast_probe = {
	.kp.symbol_name	= FAST_FN,
	.entry_handler	= entry,
	.data_size	= sizeof(struct call),
};

static struct kretprobe page_probe = {
	.kp.symbol_name	= PAGE_FN,
	.entry_handler	= entry,
	.handler	= page_ret,
	.data_size	= sizeof(struct call),
};

static bool fast_registered, page_registered;

/* Flushes every CPU's pending sample into the ring. */
static void flush_pending(void)
{
	int cpu;

	for_each_possible_cpu(cpu) {
		struct cpu_acc *a = per_cpu_ptr(&acc, cpu);
		struct sample s;
		unsigned long flags;

		/* A table being summed right now is cut in two samples. */
		raw_spin_lock_irqsave(&a->lock, flags);
		s = a->cur;
		a->cur.calls = 0;
		raw_spin_unlock_irqrestore(&a->lock, flags);
		if (s.calls)
			push(&s);
	}
}

static int hold_show(struct seq_file *m, void *v)
{
	static const char * const names[] = { "fast", "page" };
	struct sample *copy;
	unsigned int n, i;
	unsigned long flags;

	flush_pending();
	copy = vmalloc(array_size(NR_SAMPLES, sizeof(*copy)));
	if (!copy)
		return -ENOMEM;
	raw_spin_lock_irqsave(&ring_lock, flags);
	n = ring_len;
	memcpy(copy, ring, n * sizeof(*copy));
	raw_spin_unlock_irqrestore(&ring_lock, flags);
	for (i = 0; i < n; i++)
		seq_printf(m, "%llu %u %s\n", copy[i].ns, copy[i].calls,
			   names[copy[i].op]);
	vfree(copy);
	return 0;
}

static int hold_open(struct inode *inode, struct file *file)
{
	/* The output can be large: size the buffer for the whole ring. */
	return single_open_size(file, hold_show, NULL, NR_SAMPLES * 40);
}

static ssize_t hold_write(struct file *file, const char __user *ubuf,
			  size_t len, loff_t *ppos)
{
	char buf[8] = {};
	unsigned long flags;

	if (len == 0 || len >= sizeof(buf))
		return -EINVAL;
	if (copy_from_user(buf, ubuf, len))
		return -EFAULT;
	if (strcmp(strim(buf), "clear"))
		return -EINVAL;
	flush_pending();
	raw_spin_lock_irqsave(&ring_lock, flags);
	ring_len = 0;
	dropped = 0;
	raw_spin_unlock_irqrestore(&ring_lock, flags);
	return len;
}

static const struct file_operations hold_fops = {
	.owner		= THIS_MODULE,
	.open		= hold_open,
	.read		= seq_read,
	.llseek		= seq_lseek,
	.release	= single_release,
	.write		= hold_write,
};

static int stats_show(struct seq_file *m, void *v)
{
	seq_printf(m, "mode %s\n", mode);
	seq_printf(m, "samples %u\n", READ_ONCE(ring_len));
	seq_printf(m, "dropped %llu\n", READ_ONCE(dropped));
	seq_printf(m, "shifted %lld\n", atomic64_read(&shifted));
	seq_printf(m, "fast_probe %d\n", fast_registered);
	seq_printf(m, "missed %d %d %lu %lu\n",
		   fast_registered ? fast_probe.nmissed : 0,
		   page_registered ? page_probe.nmissed : 0,
		   fast_registered ? fast_probe.kp.nmissed : 0,
		   page_registered ? page_probe.kp.nmissed : 0);
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(stats);

static void unregister(void)
{
	if (fast_registered)
		unregister_kretprobe(&fast_probe);
	if (page_registered)
		unregister_kretprobe(&page_probe);
	fast_registered = page_registered = false;
}

static int __init lru_gen_probe_init(void)
{
	bool timing = !strcmp(mode, "time");
	int err, cpu;

	if (!timing && strcmp(mode, "shift")) {
		pr_err("mode=%s: want time or shift\n", mode);
		return -EINVAL;
	}
	ring = vmalloc(array_size(NR_SAMPLES, sizeof(*ring)));
	if (!ring)
		return -ENOMEM;
	for_each_possible_cpu(cpu)
		raw_spin_lock_init(&per_cpu_ptr(&acc, cpu)->lock);

	fast_probe.handler = timing ? fast_ret : shift_ret;
	err = register_kretprobe(&fast_probe);
	if (!err) {
		fast_registered = true;
	} else if (!timing || err != -ENOENT) {
		/* mode=shift needs the series' entry point. */
		pr_err("cannot probe %s: %d\n", FAST_FN, err);
		goto fail;
	}
	if (timing) {
		err = register_kretprobe(&page_probe);
		if (err) {
			pr_err("cannot probe %s: %d\n", PAGE_FN, err);
			goto fail;
		}
		page_registered = true;
	}

	dir = debugfs_create_dir(KBUILD_MODNAME, NULL);
	debugfs_create_file("hold_ns", 0600, dir, NULL, &hold_fops);
	debugfs_create_file("stats", 0400, dir, NULL, &stats_fops);
	pr_info("mode=%s, fast-only entry point %s\n", mode,
		fast_registered ? "probed" : "absent");
	return 0;
fail:
	unregister();
	vfree(ring);
	return err;
}

static void __exit lru_gen_probe_exit(void)
{
	/* No file can be open (their owner is this module), no handler runs. */
	debugfs_remove_recursive(dir);
	unregister();
	vfree(ring);
}

module_init(lru_gen_probe_init);
module_exit(lru_gen_probe_exit);
MODULE_DESCRIPTION("Kretprobes timing and perturbing MMU notifier aging (selftests)");
MODULE_LICENSE("GPL");
