// Beacon dashboard charts: each <canvas data-chart> carries its data (never code) as JSON; Chart.js is served locally.
(function () {
  "use strict";
  if (!window.Chart) return;
  var palette = ["#1f6feb", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#06b6d4"];
  Chart.defaults.font.family = '-apple-system, "PingFang SC", "Hiragino Sans GB", "Microsoft YaHei", "Noto Sans CJK SC", sans-serif';
  Chart.defaults.animation = false;
  Array.prototype.forEach.call(document.querySelectorAll("canvas[data-chart]"), function (canvas) {
    var spec = JSON.parse(canvas.dataset.chart);
    var chart = new Chart(canvas, {
      type: spec.type || "bar",
      data: {
        labels: spec.labels,
        datasets: spec.series.map(function (s, i) {
          return { label: s.label, data: s.data, backgroundColor: palette[i % palette.length], borderRadius: 4, maxBarThickness: 28 };
        })
      },
      options: {
        indexAxis: spec.horizontal ? "y" : "x",
        responsive: true,
        maintainAspectRatio: false,
        plugins: { legend: { display: spec.series.length > 1, position: "bottom" } },
        scales: { x: { beginAtZero: true, ticks: { precision: 0 } }, y: { beginAtZero: true, ticks: { precision: 0 } } }
      }
    });
    canvas.dataset.rendered = "1";
    canvas.chart = chart;
  });
})();
