// SPDX-License-Identifier: GPL-2.0
/*
 * ptvmm_testdev: a minimal driver for ptvmm's PCI test device (1af4:10f0, see
 * devices/testdev) in MSI-X mode. It exists so an end-to-end test can show
 * that a Linux guest enables the device's MSI-X vectors: no in-tree driver
 * does that for an unknown device (uio_pci_generic is INTx only).
 *
 * Probe enables every vector the device has and requests each as
 * "ptvmm-testdev-<N>", so /proc/interrupts shows and counts them. The driver
 * never touches BAR0; the test raises vectors through the sysfs resource0
 * file (RAISE register) or from the host.
 */
#include <linux/interrupt.h>
#include <linux/module.h>
#include <linux/pci.h>
#include <linux/slab.h>

#define TESTDEV_VENDOR 0x1af4
#define TESTDEV_DEVICE 0x10f0

struct testdev_vec {
	unsigned long count; /* only the handler writes it: one vector's handler never nests */
	char name[24];       /* request_irq keeps the pointer, so it lives here */
};

struct testdev {
	int nvec;
	struct testdev_vec vec[];
};

static irqreturn_t testdev_irq(int irq, void *data)
{
	struct testdev_vec *v = data;

	/* MSI-X is edge-triggered: there is no device state to acknowledge. */
	v->count++;
	return IRQ_HANDLED;
}

static void testdev_free_irqs(struct pci_dev *pdev, struct testdev *td, int n)
{
	while (n-- > 0)
		free_irq(pci_irq_vector(pdev, n), &td->vec[n]);
}

static int testdev_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct testdev *td;
	int nvec, i, err;

	/*
	 * The INTx flavour of the device has no MSI-X capability: leave it
	 * unbound for uio_pci_generic. -ENODEV makes the driver core move on
	 * quietly; this is expected, not an error.
	 */
	nvec = pci_msix_vec_count(pdev);
	if (nvec <= 0) {
		dev_info(&pdev->dev, "no MSI-X capability (INTx test device), not binding\n");
		return -ENODEV;
	}

	td = kzalloc(struct_size(td, vec, nvec), GFP_KERNEL);
	if (!td)
		return -ENOMEM;
	td->nvec = nvec;

	/* Memory decoding is needed for the MSI-X table in BAR2. */
	err = pci_enable_device_mem(pdev);
	if (err) {
		dev_err(&pdev->dev, "enable device: %d\n", err);
		goto err_free;
	}
	/* An MSI is a memory write by the device, so it must be a bus master. */
	pci_set_master(pdev);

	/* All vectors or none: the test checks every one. */
	err = pci_alloc_irq_vectors(pdev, nvec, nvec, PCI_IRQ_MSIX);
	if (err < 0) {
		dev_err(&pdev->dev, "enable %d MSI-X vectors: %d\n", nvec, err);
		goto err_disable;
	}

	for (i = 0; i < nvec; i++) {
		struct testdev_vec *v = &td->vec[i];

		snprintf(v->name, sizeof(v->name), "ptvmm-testdev-%d", i);
		err = request_irq(pci_irq_vector(pdev, i), testdev_irq, 0, v->name, v);
		if (err) {
			dev_err(&pdev->dev, "request vector %d: %d\n", i, err);
			testdev_free_irqs(pdev, td, i);
			goto err_vectors;
		}
	}
	pci_set_drvdata(pdev, td);
	dev_info(&pdev->dev, "%d MSI-X vectors enabled\n", nvec);
	return 0;

err_vectors:
	pci_free_irq_vectors(pdev);
err_disable:
	pci_clear_master(pdev);
	pci_disable_device(pdev);
err_free:
	kfree(td);
	return err;
}

static void testdev_remove(struct pci_dev *pdev)
{
	struct testdev *td = pci_get_drvdata(pdev);
	int i;

	testdev_free_irqs(pdev, td, td->nvec);
	/* free_irq waited for running handlers, so the counts are final. */
	for (i = 0; i < td->nvec; i++)
		dev_info(&pdev->dev, "vector %d: %lu interrupts\n", i, td->vec[i].count);
	pci_free_irq_vectors(pdev);
	pci_clear_master(pdev);
	pci_disable_device(pdev);
	kfree(td);
}

static const struct pci_device_id testdev_ids[] = {
	{ PCI_DEVICE(TESTDEV_VENDOR, TESTDEV_DEVICE) },
	{ }
};
MODULE_DEVICE_TABLE(pci, testdev_ids);

static struct pci_driver testdev_driver = {
	.name = "ptvmm_testdev",
	.id_table = testdev_ids,
	.probe = testdev_probe,
	.remove = testdev_remove,
};
module_pci_driver(testdev_driver);

MODULE_DESCRIPTION("ptvmm PCI test device: enables its MSI-X vectors");
/* GPL: pci_alloc_irq_vectors and friends are GPL-only exports. */
MODULE_LICENSE("GPL");
