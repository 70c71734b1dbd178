package bench

import (
	"fmt"
	"image/color"
	"os"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// pathColors keep a path's colour the same in every panel: passthrough in blues,
// virtio-net in oranges.
var pathColors = map[Path]color.RGBA{
	PathPtnetSwitch:  {0x1f, 0x4e, 0x9a, 0xff},
	PathPtnetPipe:    {0x5b, 0x9b, 0xd5, 0xff},
	PathVirtioTap:    {0xd9, 0x5f, 0x02, 0xff},
	PathVirtioSwitch: {0xf4, 0xa5, 0x3c, 0xff},
}

// Plot draws Mpps per path and frame size as a PNG, one panel per workload (each
// with its own scale: ping-pong counts round trips), every bar labelled with its
// value so that small bars next to large ones still read.
func (rep *Report) Plot(path string) error {
	var wls []Workload
	for _, w := range Workloads {
		for _, r := range rep.Records {
			if r.Workload == w {
				wls = append(wls, w)
				break
			}
		}
	}
	if len(wls) == 0 {
		return fmt.Errorf("bench: plot %s: nothing was measured", path)
	}
	var paths []Path
	for _, p := range Paths {
		for _, r := range rep.Records {
			if r.Path == p {
				paths = append(paths, p)
				break
			}
		}
	}
	sizes := sizesOf(rep.Records)
	plots := make([][]*plot.Plot, len(wls))
	for i, w := range wls {
		p, err := rep.panel(w, paths, sizes)
		if err != nil {
			return err
		}
		plots[i] = []*plot.Plot{p}
	}
	width := vg.Points(float64(max(520, 40*len(sizes)*len(paths)+len(sizes)*60+200)))
	img := vgimg.New(width, vg.Points(float64(270*len(wls))))
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: len(wls), Cols: 1, PadTop: vg.Points(6), PadBottom: vg.Points(6), PadLeft: vg.Points(6), PadRight: vg.Points(10), PadY: vg.Points(14)}
	canvases := plot.Align(plots, tiles, dc)
	for i := range plots {
		plots[i][0].Draw(canvases[i][0])
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("bench: plot: %w", err)
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return fmt.Errorf("bench: plot %s: %w", path, err)
	}
	return f.Close()
}

var workloadTitles = map[Workload]string{
	WorkloadTX:       "guest TX",
	WorkloadRX:       "guest RX",
	WorkloadPingPong: "ping-pong",
}

// panel is one workload: a group of bars per frame size, one bar per path.
func (rep *Report) panel(w Workload, paths []Path, sizes []int) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("%s - tier %s, %s (%d cores), %s", workloadTitles[w], rep.Tier, rep.Machine.CPU, rep.Machine.Cores, dateOnly(rep.Date))
	p.Title.TextStyle.Font.Size = vg.Points(10)
	p.Y.Label.Text = "Mpps"
	if w == WorkloadPingPong {
		p.Y.Label.Text = "M round trips/s"
	}
	p.Y.Min = 0
	p.Legend.Top = true
	p.Legend.Left = false
	p.Legend.TextStyle.Font.Size = vg.Points(9)
	barW := vg.Points(26)
	ymax := 0.0
	for i, path := range paths {
		vals := make(plotter.Values, len(sizes))
		labels := plotter.XYLabels{XYs: make(plotter.XYs, len(sizes)), Labels: make([]string, len(sizes))}
		for j, s := range sizes {
			labels.XYs[j].X = float64(j)
			labels.Labels[j] = "-"
			for _, r := range rep.Records {
				if r.Path == path && r.Workload == w && r.Size == s {
					vals[j] = r.Mpps
					labels.XYs[j].Y = r.Mpps
					labels.Labels[j] = mppsLabel(r.Mpps)
					ymax = max(ymax, r.Mpps)
				}
			}
		}
		bars, err := plotter.NewBarChart(vals, barW)
		if err != nil {
			return nil, fmt.Errorf("bench: plot: %w", err)
		}
		bars.LineStyle.Width = 0
		bars.Color = pathColors[path]
		bars.Offset = vg.Length(float64(i)-float64(len(paths)-1)/2) * barW
		p.Add(bars)
		p.Legend.Add(string(path), bars)
		lab, err := plotter.NewLabels(labels)
		if err != nil {
			return nil, fmt.Errorf("bench: plot: %w", err)
		}
		for k := range lab.TextStyle {
			lab.TextStyle[k].Font.Size = vg.Points(8)
			lab.TextStyle[k].XAlign = draw.XCenter
		}
		lab.Offset = vg.Point{X: bars.Offset, Y: vg.Points(2)}
		p.Add(lab)
	}
	// Room above the tallest bar for its label and the legend.
	p.Y.Max = ymax*1.35 + 1e-9
	names := make([]string, len(sizes))
	for j, s := range sizes {
		names[j] = fmt.Sprintf("%d B", s)
	}
	p.NominalX(names...)
	// Half a category of room on each side, so the outer groups' bars fit.
	p.X.Min, p.X.Max = -0.5, float64(len(sizes))-0.5
	return p, nil
}

func mppsLabel(v float64) string {
	switch {
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	case v >= 0.1:
		return fmt.Sprintf("%.2f", v)
	}
	return fmt.Sprintf("%.3f", v)
}

func dateOnly(s string) string {
	if len(s) >= 10 {
		return s[:10]
	}
	return s
}
