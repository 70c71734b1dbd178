// SPDX-License-Identifier: GPL-2.0
/*
 * ptvmm_ptnet: the guest half of ptvmm's netmap passthrough, for a userspace
 * driver (guest/ptnet in Go). It binds the two ptnetmap PCI devices (SPECS
 * 3.1-3.3): the memdev (1b36:000c, class "other"), whose BAR1 is the host
 * netmap port's memory, and the ptnet NIC (1b36:000d, class ethernet), whose
 * BAR0 holds the registers and KICK doorbells. It moves no packet: it gives
 * one process the memory, the doorbells and the interrupts, and the process
 * runs netmap's CSB driver protocol (SPECS 3.6) itself.
 *
 * Why a module rather than a module-free path (sysfs resource files,
 * /proc/self/pagemap, polling):
 *  - BAR1 must be mapped write-back. sysfs resourceN files map uncached (and
 *    resourceN_wc write-combining), which is correct but slow on real
 *    hardware: AMD NPT honours the guest's memory type. Only the kernel can
 *    hand userspace a cached mapping of a PCI BAR.
 *  - The CSB must sit in guest memory whose physical address is known and
 *    stays put. Userspace memory can move or be swapped, and pagemap hides
 *    physical addresses without CAP_SYS_ADMIN; a kernel page cannot move.
 *  - ptnet has only MSI-X (no INTx, SPECS 3.8). Debian's kernel has
 *    VFIO_NOIOMMU off and uio_pci_generic does INTx only, so nothing in-tree
 *    delivers MSI-X vectors to userspace; without interrupts the guest could
 *    only busy-poll, which the host's kick and interrupt suppression exists
 *    to avoid.
 *
 * Devices: one misc device /dev/ptnetN per ptnet NIC, mode 0600, one opener
 * at a time (netmap's CSB mode is exclusive too). The memdev gets no node:
 * the ptnet is paired with the memdev whose MEMID equals its HOSTMEMID (low
 * 16 bits, as netmap's guest driver compares them), whatever the probe order.
 *
 * Userspace ABI (version 1; guest/ptnet mirrors it and its test checks the
 * defines below against the Go constants):
 *  - mmap(MAP_SHARED) at PTVMM_PTNET_MMAP_*:
 *      BAR1_WB   memdev BAR1 write-back, MEMSIZE rounded up to a page
 *      BAR1_UC   the same memory uncached (to measure the difference)
 *      REGS      ptnet BAR0, one page uncached (only if BAR0 is MMIO and
 *                at least a page): register reads and KICK stores
 *      CSB       two pages, write-back: atok page then ktoa page
 *  - ioctl INFO: ring and slot counts, NIFP_OFS, HOSTMEMID, MEMID and
 *    MEMSIZE of the paired memdev, MAC, physical addresses (for logs).
 *  - ioctl REG_WRITE {off, val}: writes PTFEAT, PTCTL, VNET_HDR_LEN (each
 *    "write then read": val comes back as the register read after the
 *    write) or KICK(i). The CSB address registers belong to the module.
 *    REG_READ {off}: any register below END. Both work with an I/O BAR0.
 *  - Interrupts: each MSI-X vector i (= CSB ring i: TX rings, then RX)
 *    counts. ioctl WAIT {ring, timeout_ns, count} blocks until ring's count
 *    differs from the count passed in (returns 0 and the new count) or the
 *    timeout passes (ETIMEDOUT); timeout_ns < 0 waits forever, 0 only
 *    checks. A caller that passes the count it saw last never misses an
 *    interrupt. read() returns the counts (u64 per ring, never blocks) and
 *    poll() reports readable when a count changed since this file's last
 *    read, for waiting on several rings with epoll.
 *  - open: zeroes the CSB pages and writes CSB_GH_BAH, GH_BAL, HG_BAH,
 *    HG_BAL (high first, as netmap's driver). release and remove: PTCTL
 *    DELETE if a CREATE succeeded, then clear the four CSB registers;
 *    remove also frees the vectors. The CSB pages live until the last
 *    mapping is gone.
 *
 * BAR1 write-back is what the page tables ask for; the memory type the CPU
 * uses also depends on the guest's MTRRs when PAT is on (Linux 6.1 turns a
 * write-back request into UC- where the MTRRs do not say write-back, and
 * disables PAT when the MTRRs are off). See guest/kmod/README.md.
 */
#include <linux/atomic.h>
#include <linux/build_bug.h>
#include <linux/fs.h>
#include <linux/idr.h>
#include <linux/interrupt.h>
#include <linux/io.h>
#include <linux/kref.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/pci.h>
#include <linux/poll.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/wait.h>

/* ---- ABI shared with guest/ptnet (keep in step; its test parses these) ---- */
#define PTVMM_PTNET_ABI_VERSION 1

/* mmap offsets (bytes): one 1 TiB window per area. */
#define PTVMM_PTNET_MMAP_BAR1_WB 0x0000000000ULL
#define PTVMM_PTNET_MMAP_BAR1_UC 0x10000000000ULL
#define PTVMM_PTNET_MMAP_REGS 0x20000000000ULL
#define PTVMM_PTNET_MMAP_CSB 0x30000000000ULL
#define PTVMM_PTNET_MMAP_SHIFT 40

/* info flags */
#define PTVMM_PTNET_F_MEMDEV 0x1    /* a memdev with MEMID == HOSTMEMID is bound */
#define PTVMM_PTNET_F_REGS_MMAP 0x2 /* BAR0 is MMIO and can be mmapped */
#define PTVMM_PTNET_F_CREATED 0x4   /* a PTCTL CREATE succeeded, no DELETE since */

#define PTVMM_PTNET_IOC_MAGIC 0xB7
#define PTVMM_PTNET_IOC_INFO_NR 1
#define PTVMM_PTNET_IOC_REG_READ_NR 2
#define PTVMM_PTNET_IOC_REG_WRITE_NR 3
#define PTVMM_PTNET_IOC_WAIT_NR 4
#define PTVMM_PTNET_INFO_SIZE 88
#define PTVMM_PTNET_REG_SIZE 8
#define PTVMM_PTNET_WAIT_SIZE 24

struct ptvmm_ptnet_info {
	__u32 version;      /*  0 */
	__u32 flags;        /*  4 */
	__u32 num_tx_rings; /*  8 */
	__u32 num_rx_rings; /* 12 */
	__u32 num_tx_slots; /* 16 */
	__u32 num_rx_slots; /* 20 */
	__u32 nifp_ofs;     /* 24 */
	__u32 hostmemid;    /* 28 */
	__u32 memid;        /* 32: paired memdev's MEMID (with F_MEMDEV) */
	__u32 nvec;         /* 36: MSI-X vectors = CSB rings at probe */
	__u8 mac[6];        /* 40 */
	__u8 pad[2];        /* 46 */
	__u64 memsize;      /* 48: paired memdev's MEMSIZE */
	__u64 bar1_phys;    /* 56 */
	__u64 bar1_len;     /* 64 */
	__u64 csb_phys;     /* 72: atok page; the ktoa page follows */
	__u64 bar0_len;     /* 80 */
};

struct ptvmm_ptnet_reg {
	__u32 off; /* 0: byte offset in ptnet BAR0 */
	__u32 val; /* 4 */
};

struct ptvmm_ptnet_wait {
	__u32 ring;       /*  0: CSB ring (TX rings, then RX rings) */
	__u32 pad;        /*  4: must be 0 */
	__s64 timeout_ns; /*  8: < 0 forever, 0 just check */
	__u64 count;      /* 16: in: count last seen; out: count now */
};

#define PTVMM_PTNET_IOC_INFO _IOR(PTVMM_PTNET_IOC_MAGIC, PTVMM_PTNET_IOC_INFO_NR, struct ptvmm_ptnet_info)
#define PTVMM_PTNET_IOC_REG_READ _IOWR(PTVMM_PTNET_IOC_MAGIC, PTVMM_PTNET_IOC_REG_READ_NR, struct ptvmm_ptnet_reg)
#define PTVMM_PTNET_IOC_REG_WRITE _IOWR(PTVMM_PTNET_IOC_MAGIC, PTVMM_PTNET_IOC_REG_WRITE_NR, struct ptvmm_ptnet_reg)
#define PTVMM_PTNET_IOC_WAIT _IOWR(PTVMM_PTNET_IOC_MAGIC, PTVMM_PTNET_IOC_WAIT_NR, struct ptvmm_ptnet_wait)
/* ---- end of ABI ---- */

#define PTNET_VENDOR 0x1b36
#define MEMDEV_DEVICE 0x000c
#define PTNET_DEVICE 0x000d

/* memdev BAR0 (SPECS 3.2) */
#define MEMDEV_MEMSIZE_LO 0
#define MEMDEV_MEMSIZE_HI 4
#define MEMDEV_MEMID 8

/* ptnet BAR0 (SPECS 3.3) */
#define PTNET_PTFEAT 0
#define PTNET_PTCTL 4
#define PTNET_MAC_LO 8
#define PTNET_MAC_HI 12
#define PTNET_NIFP_OFS 24
#define PTNET_NUM_TX_RINGS 28
#define PTNET_NUM_RX_RINGS 32
#define PTNET_NUM_TX_SLOTS 36
#define PTNET_NUM_RX_SLOTS 40
#define PTNET_VNET_HDR_LEN 44
#define PTNET_HOSTMEMID 48
#define PTNET_CSB_GH_BAH 52
#define PTNET_CSB_GH_BAL 56
#define PTNET_CSB_HG_BAH 60
#define PTNET_CSB_HG_BAL 64
#define PTNET_IO_END 68
#define PTNET_KICK_BASE 128

#define PTCTL_CREATE 1
#define PTCTL_DELETE 2

#define CSB_ENTRY_SIZE 64
/* Two pages (atok, ktoa) of 64-B entries; netmap's guest driver refuses more. */
#define PTNET_MAX_RINGS 64

#define DRV_NAME "ptvmm_ptnet"

/* A memdev: the paired ptnet maps its BAR1 for userspace. */
struct memdev {
	struct list_head node; /* on memdevs, under ptvmm_lock */
	struct kref ref;       /* the list's and each paired ptnet's */
	bool gone;             /* removed; under ptvmm_lock */
	u32 memid;
	u64 memsize;
	resource_size_t bar1_phys, bar1_len;
};

struct ring_irq {
	atomic64_t count; /* interrupts taken; only grows */
	wait_queue_head_t wq;
	struct ptnet *pt;
	char name[32]; /* request_irq keeps the pointer */
};

struct ptnet {
	struct kref ref; /* probe's and the open file's */
	struct pci_dev *pdev;
	void __iomem *regs;
	resource_size_t bar0_phys, bar0_len;
	bool bar0_mmio;
	struct page *csb; /* order 1: atok page, ktoa page */
	int index;
	char name[16];
	struct miscdevice misc;

	struct mutex lock; /* everything below, and register access */
	bool gone;         /* removed: no registers, no vectors */
	bool open;
	bool created; /* PTCTL CREATE read back 0, no DELETE since */
	struct memdev *md;

	wait_queue_head_t pollwq;
	u64 *seen; /* per ring: count at this file's last read() */
	int nvec;
	struct ring_irq irq[];
};

static DEFINE_MUTEX(ptvmm_lock); /* memdevs */
static LIST_HEAD(memdevs);
static DEFINE_IDA(ptnet_ida);

static void memdev_free(struct kref *ref)
{
	kfree(container_of(ref, struct memdev, ref));
}

/* ---- memdev ---- */

static int memdev_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct memdev *md;
	void __iomem *regs;
	int err;

	err = pci_enable_device(pdev);
	if (err)
		return err;
	err = pci_request_regions(pdev, DRV_NAME);
	if (err)
		goto err_disable;
	err = -ENODEV;
	if (!(pci_resource_flags(pdev, 1) & IORESOURCE_MEM)) {
		dev_err(&pdev->dev, "BAR1 is not a memory BAR\n");
		goto err_release;
	}
	regs = pci_iomap(pdev, 0, 0);
	if (!regs) {
		dev_err(&pdev->dev, "cannot map BAR0\n");
		goto err_release;
	}
	err = -ENOMEM;
	md = kzalloc(sizeof(*md), GFP_KERNEL);
	if (!md) {
		pci_iounmap(pdev, regs);
		goto err_release;
	}
	kref_init(&md->ref);
	md->memsize = (u64)ioread32(regs + MEMDEV_MEMSIZE_HI) << 32 | ioread32(regs + MEMDEV_MEMSIZE_LO);
	md->memid = ioread32(regs + MEMDEV_MEMID);
	pci_iounmap(pdev, regs);
	md->bar1_phys = pci_resource_start(pdev, 1);
	md->bar1_len = pci_resource_len(pdev, 1);

	/* The device says how much of BAR1 is memory; never map past the BAR. */
	err = -ENODEV;
	if (md->memsize == 0 || PAGE_ALIGN(md->memsize) > md->bar1_len || !PAGE_ALIGNED(md->bar1_phys)) {
		dev_err(&pdev->dev, "MEMSIZE %llu does not fit BAR1 (%pa, %pa bytes)\n",
			md->memsize, &md->bar1_phys, &md->bar1_len);
		kfree(md);
		goto err_release;
	}

	mutex_lock(&ptvmm_lock);
	list_add_tail(&md->node, &memdevs);
	mutex_unlock(&ptvmm_lock);
	pci_set_drvdata(pdev, md);
	dev_info(&pdev->dev, "memdev: MEMID %u, MEMSIZE %llu, BAR1 %pa\n", md->memid, md->memsize, &md->bar1_phys);
	return 0;

err_release:
	pci_release_regions(pdev);
err_disable:
	pci_disable_device(pdev);
	return err;
}

static void memdev_remove(struct pci_dev *pdev)
{
	struct memdev *md = pci_get_drvdata(pdev);

	mutex_lock(&ptvmm_lock);
	list_del(&md->node);
	md->gone = true;
	mutex_unlock(&ptvmm_lock);
	/* A paired ptnet keeps the struct, but maps nothing new from it. */
	kref_put(&md->ref, memdev_free);
	pci_release_regions(pdev);
	pci_disable_device(pdev);
}

/* ---- ptnet ---- */

static void ptnet_free(struct kref *ref)
{
	struct ptnet *pt = container_of(ref, struct ptnet, ref);

	/* Last reference: no file, so no mapping of the CSB pages is left. */
	__free_pages(pt->csb, 1);
	ida_free(&ptnet_ida, pt->index);
	kfree(pt->seen);
	kfree(pt);
}

static u32 reg_read(struct ptnet *pt, u32 off)
{
	return ioread32(pt->regs + off);
}

static void reg_write(struct ptnet *pt, u32 off, u32 val)
{
	iowrite32(val, pt->regs + off);
}

/* csb_set writes the CSB address registers, high half first, as netmap does. */
static void csb_set(struct ptnet *pt, bool on)
{
	u64 atok = on ? page_to_phys(pt->csb) : 0;
	u64 ktoa = on ? atok + PAGE_SIZE : 0;

	reg_write(pt, PTNET_CSB_GH_BAH, upper_32_bits(atok));
	reg_write(pt, PTNET_CSB_GH_BAL, lower_32_bits(atok));
	reg_write(pt, PTNET_CSB_HG_BAH, upper_32_bits(ktoa));
	reg_write(pt, PTNET_CSB_HG_BAL, lower_32_bits(ktoa));
}

/* session_end stops the host loop and detaches the CSB. Caller holds lock. */
static void session_end(struct ptnet *pt)
{
	u32 res;

	if (pt->created) {
		reg_write(pt, PTNET_PTCTL, PTCTL_DELETE);
		res = reg_read(pt, PTNET_PTCTL);
		if (res)
			dev_warn(&pt->pdev->dev, "PTCTL DELETE: %u\n", res);
		pt->created = false;
	}
	csb_set(pt, false);
}

/* pair finds the memdev for this ptnet. Caller holds pt->lock. */
static struct memdev *pair(struct ptnet *pt)
{
	struct memdev *md;
	u16 want;

	if (pt->md) {
		if (!READ_ONCE(pt->md->gone))
			return pt->md;
		kref_put(&pt->md->ref, memdev_free);
		pt->md = NULL;
	}
	want = reg_read(pt, PTNET_HOSTMEMID);
	mutex_lock(&ptvmm_lock);
	list_for_each_entry(md, &memdevs, node) {
		if ((u16)md->memid == want) {
			kref_get(&md->ref);
			pt->md = md;
			break;
		}
	}
	mutex_unlock(&ptvmm_lock);
	return pt->md;
}

static irqreturn_t ptnet_irq(int irq, void *data)
{
	struct ring_irq *r = data;

	/* MSI-X is edge-triggered: nothing to acknowledge on the device. */
	atomic64_inc(&r->count);
	wake_up(&r->wq);
	wake_up(&r->pt->pollwq);
	return IRQ_HANDLED;
}

static int ptnet_open(struct inode *inode, struct file *f)
{
	/* misc_open set private_data, and holds misc_mtx: remove cannot run yet. */
	struct ptnet *pt = container_of(f->private_data, struct ptnet, misc);
	int i, err = 0;

	mutex_lock(&pt->lock);
	if (pt->gone) {
		err = -ENODEV;
		goto out;
	}
	if (pt->open) {
		err = -EBUSY;
		goto out;
	}
	pt->open = true;
	kref_get(&pt->ref);
	for (i = 0; i < pt->nvec; i++)
		WRITE_ONCE(pt->seen[i], atomic64_read(&pt->irq[i].count));
	/* A fresh CSB: detach first, so no host loop writes while we zero it. */
	pt->created = false;
	csb_set(pt, false);
	memset(page_address(pt->csb), 0, 2 * PAGE_SIZE);
	csb_set(pt, true);
	pair(pt);
out:
	mutex_unlock(&pt->lock);
	return err;
}

static int ptnet_release(struct inode *inode, struct file *f)
{
	struct ptnet *pt = container_of(f->private_data, struct ptnet, misc);

	mutex_lock(&pt->lock);
	if (!pt->gone)
		session_end(pt);
	if (pt->md) {
		kref_put(&pt->md->ref, memdev_free);
		pt->md = NULL;
	}
	pt->open = false;
	mutex_unlock(&pt->lock);
	kref_put(&pt->ref, ptnet_free);
	return 0;
}

static int ptnet_mmap(struct file *f, struct vm_area_struct *vma)
{
	struct ptnet *pt = container_of(f->private_data, struct ptnet, misc);
	unsigned long area = vma->vm_pgoff >> (PTVMM_PTNET_MMAP_SHIFT - PAGE_SHIFT);
	unsigned long rel = vma->vm_pgoff & ((1UL << (PTVMM_PTNET_MMAP_SHIFT - PAGE_SHIFT)) - 1);
	phys_addr_t phys;
	unsigned long len;
	struct memdev *md;
	int err;

	/* A private (copy-on-write) mapping of device memory makes no sense. */
	if (!(vma->vm_flags & VM_SHARED))
		return -EINVAL;
	mutex_lock(&pt->lock);
	err = -ENODEV;
	if (pt->gone)
		goto out;
	switch (area) {
	case PTVMM_PTNET_MMAP_BAR1_WB >> PTVMM_PTNET_MMAP_SHIFT:
	case PTVMM_PTNET_MMAP_BAR1_UC >> PTVMM_PTNET_MMAP_SHIFT:
		md = pair(pt);
		if (!md)
			goto out;
		phys = md->bar1_phys;
		len = PAGE_ALIGN(md->memsize);
		if (area == PTVMM_PTNET_MMAP_BAR1_UC >> PTVMM_PTNET_MMAP_SHIFT)
			vma->vm_page_prot = pgprot_noncached(vma->vm_page_prot);
		break;
	case PTVMM_PTNET_MMAP_REGS >> PTVMM_PTNET_MMAP_SHIFT:
		/* A BAR smaller than a page would expose its neighbours. */
		if (!pt->bar0_mmio || pt->bar0_len < PAGE_SIZE || !PAGE_ALIGNED(pt->bar0_phys))
			goto out;
		phys = pt->bar0_phys;
		len = PAGE_SIZE;
		vma->vm_page_prot = pgprot_noncached(vma->vm_page_prot);
		break;
	case PTVMM_PTNET_MMAP_CSB >> PTVMM_PTNET_MMAP_SHIFT:
		phys = page_to_phys(pt->csb);
		len = 2 * PAGE_SIZE;
		break;
	default:
		err = -EINVAL;
		goto out;
	}
	/* vm_iomap_memory checks the offset and length against [phys, phys+len). */
	vma->vm_pgoff = rel;
	err = vm_iomap_memory(vma, phys, len);
out:
	mutex_unlock(&pt->lock);
	return err;
}

static ssize_t ptnet_read(struct file *f, char __user *buf, size_t len, loff_t *ppos)
{
	struct ptnet *pt = container_of(f->private_data, struct ptnet, misc);
	u64 counts[PTNET_MAX_RINGS];
	size_t n = min_t(size_t, len / sizeof(u64), pt->nvec);
	size_t i;

	if (n == 0)
		return -EINVAL;
	for (i = 0; i < n; i++) {
		counts[i] = atomic64_read(&pt->irq[i].count);
		WRITE_ONCE(pt->seen[i], counts[i]);
	}
	if (copy_to_user(buf, counts, n * sizeof(u64)))
		return -EFAULT;
	return n * sizeof(u64);
}

static __poll_t ptnet_poll(struct file *f, struct poll_table_struct *wait)
{
	struct ptnet *pt = container_of(f->private_data, struct ptnet, misc);
	int i;

	poll_wait(f, &pt->pollwq, wait);
	if (READ_ONCE(pt->gone))
		return EPOLLERR | EPOLLHUP;
	for (i = 0; i < pt->nvec; i++)
		if (atomic64_read(&pt->irq[i].count) != READ_ONCE(pt->seen[i]))
			return EPOLLIN | EPOLLRDNORM;
	return 0;
}

static long ioc_info(struct ptnet *pt, void __user *arg)
{
	struct ptvmm_ptnet_info in = { .version = PTVMM_PTNET_ABI_VERSION };
	struct memdev *md;
	u32 lo, hi;

	mutex_lock(&pt->lock);
	if (pt->gone) {
		mutex_unlock(&pt->lock);
		return -ENODEV;
	}
	/* These reads refresh from the backend port (SPECS 3.3). */
	in.num_tx_rings = reg_read(pt, PTNET_NUM_TX_RINGS);
	in.num_rx_rings = reg_read(pt, PTNET_NUM_RX_RINGS);
	in.num_tx_slots = reg_read(pt, PTNET_NUM_TX_SLOTS);
	in.num_rx_slots = reg_read(pt, PTNET_NUM_RX_SLOTS);
	in.nifp_ofs = reg_read(pt, PTNET_NIFP_OFS);
	in.hostmemid = reg_read(pt, PTNET_HOSTMEMID);
	lo = reg_read(pt, PTNET_MAC_LO);
	hi = reg_read(pt, PTNET_MAC_HI);
	in.mac[0] = hi >> 8;
	in.mac[1] = hi;
	in.mac[2] = lo >> 24;
	in.mac[3] = lo >> 16;
	in.mac[4] = lo >> 8;
	in.mac[5] = lo;
	in.nvec = pt->nvec;
	in.csb_phys = page_to_phys(pt->csb);
	in.bar0_len = pt->bar0_len;
	if (pt->bar0_mmio && pt->bar0_len >= PAGE_SIZE && PAGE_ALIGNED(pt->bar0_phys))
		in.flags |= PTVMM_PTNET_F_REGS_MMAP;
	if (pt->created)
		in.flags |= PTVMM_PTNET_F_CREATED;
	md = pair(pt);
	if (md) {
		in.flags |= PTVMM_PTNET_F_MEMDEV;
		in.memid = md->memid;
		in.memsize = md->memsize;
		in.bar1_phys = md->bar1_phys;
		in.bar1_len = md->bar1_len;
	}
	mutex_unlock(&pt->lock);
	return copy_to_user(arg, &in, sizeof(in)) ? -EFAULT : 0;
}

static long ioc_reg(struct ptnet *pt, void __user *arg, bool write)
{
	struct ptvmm_ptnet_reg r;
	long err = 0;

	if (copy_from_user(&r, arg, sizeof(r)))
		return -EFAULT;
	if (r.off & 3)
		return -EINVAL;
	mutex_lock(&pt->lock);
	if (pt->gone) {
		err = -ENODEV;
		goto out;
	}
	if (!write) {
		if (r.off >= PTNET_IO_END)
			err = -EINVAL;
		else
			r.val = reg_read(pt, r.off);
		goto out;
	}
	switch (r.off) {
	case PTNET_PTFEAT:
	case PTNET_VNET_HDR_LEN:
		reg_write(pt, r.off, r.val);
		r.val = reg_read(pt, r.off);
		break;
	case PTNET_PTCTL: {
		u32 cmd = r.val;

		reg_write(pt, r.off, cmd);
		r.val = reg_read(pt, r.off);
		if (cmd == PTCTL_CREATE && r.val == 0)
			pt->created = true;
		else if (cmd == PTCTL_DELETE)
			pt->created = false;
		break;
	}
	default:
		if (r.off >= PTNET_KICK_BASE && r.off < PTNET_KICK_BASE + 4 * pt->nvec)
			reg_write(pt, r.off, r.val);
		else
			err = -EPERM; /* CSB addresses and read-only registers */
	}
out:
	mutex_unlock(&pt->lock);
	if (!err && copy_to_user(arg, &r, sizeof(r)))
		err = -EFAULT;
	return err;
}

static long ioc_wait(struct ptnet *pt, void __user *arg)
{
	struct ptvmm_ptnet_wait w;
	struct ring_irq *r;
	long ret = 0;

	if (copy_from_user(&w, arg, sizeof(w)))
		return -EFAULT;
	if (w.ring >= pt->nvec || w.pad)
		return -EINVAL;
	r = &pt->irq[w.ring];
#define WAIT_DONE (atomic64_read(&r->count) != w.count || READ_ONCE(pt->gone))
	if (w.timeout_ns < 0)
		ret = wait_event_interruptible(r->wq, WAIT_DONE);
	else if (w.timeout_ns > 0)
		ret = wait_event_interruptible_hrtimeout(r->wq, WAIT_DONE, ns_to_ktime(w.timeout_ns));
#undef WAIT_DONE
	if (ret == -ERESTARTSYS)
		return ret;
	if (READ_ONCE(pt->gone))
		return -ENODEV;
	ret = atomic64_read(&r->count) != w.count ? 0 : -ETIMEDOUT;
	w.count = atomic64_read(&r->count);
	if (copy_to_user(arg, &w, sizeof(w)))
		return -EFAULT;
	return ret;
}

static long ptnet_ioctl(struct file *f, unsigned int cmd, unsigned long arg)
{
	struct ptnet *pt = container_of(f->private_data, struct ptnet, misc);
	void __user *p = (void __user *)arg;

	switch (cmd) {
	case PTVMM_PTNET_IOC_INFO:
		return ioc_info(pt, p);
	case PTVMM_PTNET_IOC_REG_READ:
		return ioc_reg(pt, p, false);
	case PTVMM_PTNET_IOC_REG_WRITE:
		return ioc_reg(pt, p, true);
	case PTVMM_PTNET_IOC_WAIT:
		return ioc_wait(pt, p);
	}
	return -ENOTTY;
}

static const struct file_operations ptnet_fops = {
	.owner = THIS_MODULE,
	.open = ptnet_open,
	.release = ptnet_release,
	.mmap = ptnet_mmap,
	.read = ptnet_read,
	.poll = ptnet_poll,
	.unlocked_ioctl = ptnet_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.llseek = noop_llseek,
};

static void ptnet_free_irqs(struct ptnet *pt, int n)
{
	while (n-- > 0)
		free_irq(pci_irq_vector(pt->pdev, n), &pt->irq[n]);
}

static int ptnet_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	void __iomem *regs;
	struct ptnet *pt;
	u32 ntx, nrx;
	int n, i, err;

	BUILD_BUG_ON(sizeof(struct ptvmm_ptnet_info) != PTVMM_PTNET_INFO_SIZE);
	BUILD_BUG_ON(sizeof(struct ptvmm_ptnet_reg) != PTVMM_PTNET_REG_SIZE);
	BUILD_BUG_ON(sizeof(struct ptvmm_ptnet_wait) != PTVMM_PTNET_WAIT_SIZE);
	BUILD_BUG_ON(offsetof(struct ptvmm_ptnet_info, memsize) != 48);
	BUILD_BUG_ON(offsetof(struct ptvmm_ptnet_info, bar0_len) != 80);
	BUILD_BUG_ON(offsetof(struct ptvmm_ptnet_wait, count) != 16);
	BUILD_BUG_ON(PTNET_MAX_RINGS * CSB_ENTRY_SIZE > PAGE_SIZE);

	err = pci_enable_device(pdev);
	if (err)
		return err;
	err = pci_request_regions(pdev, DRV_NAME);
	if (err)
		goto err_disable;
	regs = pci_iomap(pdev, 0, 0);
	if (!regs) {
		dev_err(&pdev->dev, "cannot map BAR0\n");
		err = -ENODEV;
		goto err_release;
	}

	ntx = ioread32(regs + PTNET_NUM_TX_RINGS);
	nrx = ioread32(regs + PTNET_NUM_RX_RINGS);
	err = -ENODEV;
	if (ntx == 0 || nrx == 0 || ntx > PTNET_MAX_RINGS || nrx > PTNET_MAX_RINGS - ntx ||
	    PTNET_KICK_BASE + 4 * (ntx + nrx) > pci_resource_len(pdev, 0)) {
		dev_err(&pdev->dev, "ring counts %u tx + %u rx do not fit (BAR0 %llu bytes)\n",
			ntx, nrx, (u64)pci_resource_len(pdev, 0));
		goto err_unmap;
	}
	n = ntx + nrx;

	err = -ENOMEM;
	pt = kzalloc(struct_size(pt, irq, n), GFP_KERNEL);
	if (!pt)
		goto err_unmap;
	pt->seen = kcalloc(n, sizeof(*pt->seen), GFP_KERNEL);
	pt->csb = alloc_pages(GFP_KERNEL | __GFP_ZERO, 1);
	if (!pt->seen || !pt->csb)
		goto err_free;
	kref_init(&pt->ref);
	mutex_init(&pt->lock);
	init_waitqueue_head(&pt->pollwq);
	pt->pdev = pdev;
	pt->regs = regs;
	pt->nvec = n;
	pt->bar0_phys = pci_resource_start(pdev, 0);
	pt->bar0_len = pci_resource_len(pdev, 0);
	pt->bar0_mmio = pci_resource_flags(pdev, 0) & IORESOURCE_MEM;
	err = ida_alloc(&ptnet_ida, GFP_KERNEL);
	if (err < 0)
		goto err_free;
	pt->index = err;
	snprintf(pt->name, sizeof(pt->name), "ptnet%d", pt->index);

	/* As netmap's driver does at probe; open writes them again. */
	csb_set(pt, true);

	/* An MSI is a memory write by the device. */
	pci_set_master(pdev);
	err = pci_alloc_irq_vectors(pdev, n, n, PCI_IRQ_MSIX);
	if (err < 0) {
		dev_err(&pdev->dev, "enable %d MSI-X vectors: %d\n", n, err);
		goto err_ida;
	}
	for (i = 0; i < n; i++) {
		struct ring_irq *r = &pt->irq[i];

		atomic64_set(&r->count, 0);
		init_waitqueue_head(&r->wq);
		r->pt = pt;
		if (i < ntx)
			snprintf(r->name, sizeof(r->name), "%s-tx%d", pt->name, i);
		else
			snprintf(r->name, sizeof(r->name), "%s-rx%d", pt->name, i - ntx);
		err = request_irq(pci_irq_vector(pdev, i), ptnet_irq, 0, r->name, r);
		if (err) {
			dev_err(&pdev->dev, "request vector %d: %d\n", i, err);
			ptnet_free_irqs(pt, i);
			goto err_vectors;
		}
	}

	pt->misc.minor = MISC_DYNAMIC_MINOR;
	pt->misc.name = pt->name;
	pt->misc.fops = &ptnet_fops;
	pt->misc.parent = &pdev->dev;
	pt->misc.mode = 0600;
	pci_set_drvdata(pdev, pt);
	err = misc_register(&pt->misc);
	if (err) {
		dev_err(&pdev->dev, "register /dev/%s: %d\n", pt->name, err);
		ptnet_free_irqs(pt, n);
		goto err_vectors;
	}
	dev_info(&pdev->dev, "/dev/%s: %u tx + %u rx rings, HOSTMEMID %u, %s BAR0\n", pt->name, ntx, nrx,
		 ioread32(regs + PTNET_HOSTMEMID), pt->bar0_mmio ? "MMIO" : "I/O");
	return 0;

err_vectors:
	pci_free_irq_vectors(pdev);
	pci_clear_master(pdev);
err_ida:
	csb_set(pt, false);
	ida_free(&ptnet_ida, pt->index);
err_free:
	if (pt->csb)
		__free_pages(pt->csb, 1);
	kfree(pt->seen);
	kfree(pt);
err_unmap:
	pci_iounmap(pdev, regs);
err_release:
	pci_release_regions(pdev);
err_disable:
	pci_disable_device(pdev);
	return err;
}

static void ptnet_remove(struct pci_dev *pdev)
{
	struct ptnet *pt = pci_get_drvdata(pdev);
	int i;

	/* No new opens; an open file keeps pt until it is released. */
	misc_deregister(&pt->misc);
	mutex_lock(&pt->lock);
	session_end(pt);
	ptnet_free_irqs(pt, pt->nvec);
	pci_free_irq_vectors(pdev);
	pci_clear_master(pdev);
	pci_iounmap(pdev, pt->regs);
	pt->regs = NULL;
	WRITE_ONCE(pt->gone, true);
	mutex_unlock(&pt->lock);
	/* Waiters see gone and return ENODEV. */
	for (i = 0; i < pt->nvec; i++)
		wake_up_all(&pt->irq[i].wq);
	wake_up_all(&pt->pollwq);
	pci_release_regions(pdev);
	pci_disable_device(pdev);
	for (i = 0; i < pt->nvec; i++)
		dev_info(&pdev->dev, "ring %d: %lld interrupts\n", i, (long long)atomic64_read(&pt->irq[i].count));
	kref_put(&pt->ref, ptnet_free);
}

static int ptvmm_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	return id->device == MEMDEV_DEVICE ? memdev_probe(pdev, id) : ptnet_probe(pdev, id);
}

static void ptvmm_remove(struct pci_dev *pdev)
{
	if (pdev->device == MEMDEV_DEVICE)
		memdev_remove(pdev);
	else
		ptnet_remove(pdev);
}

/*
 * Matched by class too: upstream QEMU reused 1b36:000c (pcie-root-port) and
 * 1b36:000d (xhci), and this driver must not take those.
 */
static const struct pci_device_id ptvmm_ids[] = {
	{ PCI_DEVICE(PTNET_VENDOR, MEMDEV_DEVICE), .class = PCI_CLASS_OTHERS << 16, .class_mask = 0xff0000 },
	{ PCI_DEVICE(PTNET_VENDOR, PTNET_DEVICE), .class = PCI_CLASS_NETWORK_ETHERNET << 8, .class_mask = 0xffff00 },
	{ }
};
MODULE_DEVICE_TABLE(pci, ptvmm_ids);

static struct pci_driver ptvmm_driver = {
	.name = DRV_NAME,
	.id_table = ptvmm_ids,
	.probe = ptvmm_probe,
	.remove = ptvmm_remove,
};
module_pci_driver(ptvmm_driver);

MODULE_DESCRIPTION("ptvmm netmap passthrough (memdev + ptnet) for a userspace driver");
/* GPL: the MSI-X interrupt API is exported to GPL modules only. */
MODULE_LICENSE("GPL");
