// midflight's in-place chart (app/live_chart.py): a Streamlit components-v2 module, drawn in the page itself.
// Streamlit calls the default export on every render with the element's persistent parentElement; the first
// call makes one Plotly plot there, later calls apply the new figure to it with Plotly.react, so a refresh
// never blanks it (the last image stays until the new one is drawn). plotly.js is loaded once per page from
// the dashboard's own server (data.plotly_js: the plotly package's file), never from a CDN.
const COLORWAY = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                  "#bcbd22", "#17becf"];  // the palette st.plotly_chart draws with in Streamlit 1.67's light theme

function loadPlotly(src) {  // one <script> for the whole page, shared by every chart
  if (!window.__midflightPlotly) {
    window.__midflightPlotly = new Promise((resolve, reject) => {
      if (window.Plotly) { resolve(window.Plotly); return; }
      const s = document.createElement("script");
      s.src = src;
      s.onload = () => (window.Plotly ? resolve(window.Plotly) : reject(new Error("plotly.js did not load")));
      s.onerror = () => { window.__midflightPlotly = null; reject(new Error("cannot load " + src)); };
      document.head.appendChild(s);
    });
  }
  return window.__midflightPlotly;
}

function alpha(colour, a) {  // "rgb(r, g, b)" -> "rgba(r, g, b, a)"
  const m = /^rgba?\((\d+),\s*(\d+),\s*(\d+)/.exec(colour || "");
  return m ? `rgba(${m[1]},${m[2]},${m[3]},${a})` : colour;
}

function template(el) {  // close to Streamlit's own Plotly theme: the app's font and text colour, its palette
  const css = getComputedStyle(el);
  const text = css.color || "rgb(49, 51, 63)", font = css.fontFamily || "sans-serif";
  const grid = alpha(text, 0.1);
  const axis = { gridcolor: grid, zerolinecolor: alpha(text, 0.2), linecolor: grid, automargin: true,
                 tickfont: { color: alpha(text, 0.75) }, title: { font: { color: alpha(text, 0.75) } } };
  return { layout: {
    font: { family: font, color: text, size: 12 }, colorway: COLORWAY,
    title: { x: 0, xanchor: "left", font: { family: font, color: text, weight: 600 } },
    paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)",
    hoverlabel: { font: { family: font } }, legend: { font: { color: text } },
    xaxis: Object.assign({ showgrid: false }, axis), yaxis: axis,
  } };
}

function point(p) {  // the fields app/selection.py reads, in st.plotly_chart's selection shape
  return { x: p.x, y: p.y, customdata: p.customdata, curve_number: p.curveNumber, point_index: p.pointIndex };
}

const PLOTS = (window.__midflightPlots = window.__midflightPlots || new Set());

function sweep() {  // plots whose element left the page (another page, a chart no longer drawn): free them
  for (const old of PLOTS) {
    if (!old.isConnected) { PLOTS.delete(old); if (window.Plotly) window.Plotly.purge(old); }
  }
}

export default function (component) {
  const { data, parentElement, setTriggerValue } = component;
  sweep();  // not in a cleanup: Streamlit runs that before every render, and the plot must outlive renders
  let gd = parentElement.querySelector(".midflight-chart");
  if (!gd) {
    gd = document.createElement("div");
    gd.className = "midflight-chart";
    parentElement.appendChild(gd);
    PLOTS.add(gd);
  }
  const fig = JSON.parse(data.spec);
  const layout = fig.layout || {};
  layout.template = template(parentElement);
  layout.autosize = true;
  delete layout.width;
  layout.uirevision = data.key;  // a zoom or pan made in the chart survives refreshes; new figure values win
  gd.style.height = (layout.height || 450) + "px";  // the element keeps its size before the first draw
  gd.__midflightSend = (selection) => setTriggerValue("selection", selection);  // this render's sender
  const config = Object.assign({ responsive: true }, data.config || {});
  // renders are drawn in order; one that arrives during a draw waits, and only the newest is drawn
  gd.__midflightNext = { data: fig.data || [], layout, config };
  if (gd.__midflightBusy) return;
  gd.__midflightBusy = true;
  (async () => {
    try {
      const Plotly = await loadPlotly(data.plotly_js);
      while (gd.__midflightNext) {
        const next = gd.__midflightNext;
        gd.__midflightNext = null;
        await Plotly.react(gd, next.data, next.layout, next.config);
        if (!gd.__midflightBound) {
          gd.__midflightBound = true;
          gd.on("plotly_click", (ev) => {
            if (ev && ev.points && ev.points.length) gd.__midflightSend({ points: ev.points.map(point), box: [] });
          });
          gd.on("plotly_selected", (ev) => {  // undefined on a double-click that clears: nothing to send
            if (!ev || !ev.range || !ev.range.x) return;
            gd.__midflightSend({ points: (ev.points || []).map(point), box: [{ x: ev.range.x, y: ev.range.y || [] }] });
          });
        }
      }
    } catch (err) {
      console.error("midflight chart:", err);
    } finally {
      gd.__midflightBusy = false;
    }
  })();
}
