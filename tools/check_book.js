// The page-side half of tools/check_book.py: evaluated in every page of the built book.
// checkBook.waitForPage(): resolves when maths is typeset and saved widgets are rendered.
// checkBook.inspectPage(): what a reader would trip on, as plain data for the Python side.
var checkBook = window.checkBook = {};

checkBook.waitForPage = async () => {
  const sleep = ms => new Promise(r => setTimeout(r, ms));
  const deadline = Date.now() + 30000;
  // Maths: MathJax replaces every \( \) span with an <mjx-container>.
  while (Date.now() < deadline) {
    const math = document.querySelectorAll('.math');
    const pending = [...math].filter(m => !m.querySelector('mjx-container'));
    if (pending.length === 0) break;
    await sleep(200);
  }
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    await Promise.race([MathJax.startup.promise, sleep(10000)]);
  }
  // Widgets: the embed manager renders each saved view next to its <script> tag.
  const manager = document.querySelector('script[src*="embed-amd"], script[data-jupyter-widgets-cdn]');
  while (manager && Date.now() < deadline) {
    const views = document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]');
    const done = [...views].every(s => s.parentElement.querySelector('.jupyter-widgets, .widget-inline-hbox, .lm-Widget'));
    if (done) break;
    await sleep(200);
  }
  await sleep(300);
  return document.documentElement.scrollHeight;
};

checkBook.inspectPage = () => {
  const out = {rawTex: [], plainMaths: [], images: [], progress: [], blankOutputs: [],
               widgets: [], links: [], duplicates: [], overflow: []};
  // The page's own content (the theme's header, sidebars and launch-button logos are not).
  const article = document.querySelector('article.bd-article') || document.querySelector('main') || document.body;
  const skip = el => el.closest('pre, code, script, style, textarea, mjx-container, .math, .highlight, .MathJax, svg, .headerlink');
  const visible = el => { const r = el.getBoundingClientRect(); const s = getComputedStyle(el);
    return r.width > 0 && r.height > 0 && s.visibility !== 'hidden' && s.display !== 'none'; };
  const where = el => { const sec = el.closest('section[id]'); return sec ? '#' + sec.id : ''; };
  const clip = t => t.replace(/\s+/g, ' ').trim().slice(0, 120);
  // Raw TeX and maths typed as text, in prose and in printed Markdown tables.
  const walker = document.createTreeWalker(article, NodeFilter.SHOW_TEXT);
  const rawTex = /\\\(|\\\)|\\\[|\\\]|\$[^$\s][^$]*\$|\\(frac|sqrt|mathrm|mathbf|sum|operatorname|begin|end|left|right|cdot|times|le|ge|top)\b/;
  const plainMaths = /[A-Za-z0-9)\]]\^[-0-9A-Za-z{(]|[A-Za-z]_\{|\s(<=|>=)\s/;
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const el = n.parentElement;
    if (!el || skip(el) || !n.textContent.trim() || !visible(el)) continue;
    if (rawTex.test(n.textContent)) out.rawTex.push(where(el) + ' "' + clip(n.textContent) + '"');
    else if (plainMaths.test(n.textContent)) out.plainMaths.push(where(el) + ' "' + clip(n.textContent) + '"');
  }
  // Images: alt text, and the scale they are shown at.
  const seen = {};
  for (const img of article.querySelectorAll('img')) {
    const src = img.getAttribute('src') || '';
    const alt = (img.getAttribute('alt') || '').trim();
    const name = src.split('/').pop();
    const fig = img.closest('figure');
    const info = {src: name, alt: alt, where: where(img),
                  natural: img.naturalWidth, shown: img.getBoundingClientRect().width,
                  complete: img.complete, caption: !!(fig && fig.querySelector('figcaption')),
                  logo: !!img.closest('.navbar-brand, .logo, header, nav'),
                  widget: !!img.closest('.jupyter-widgets, .lm-Widget, .widget-output')};
    out.images.push(info);
    if (!info.logo && src) { seen[src] = (seen[src] || 0) + 1; if (seen[src] === 2) out.duplicates.push(name + ' ' + where(img)); }
  }
  // Progress bars: tqdm's text line, or a progress widget, or a blank output area.
  const tqdmText = /\d+%\|.*\||\d+\/\d+ \[\d+:\d+|it\/s\]|s\/it\]/;
  for (const o of article.querySelectorAll('.cell_output, .output')) {
    if (tqdmText.test(o.textContent)) out.progress.push(where(o) + ' "' + clip(o.textContent) + '"');
    if (o.querySelector('progress, .progress, .widget-hprogress, .jupyter-widgets.widget-progress'))
      out.progress.push(where(o) + ' (a progress widget)');
  }
  for (const o of article.querySelectorAll('.cell_output')) {
    const r = o.getBoundingClientRect();
    const content = o.textContent.trim() || o.querySelector('img, svg, canvas, table, iframe, .jupyter-widgets, .lm-Widget');
    if (!content && r.height > 10) out.blankOutputs.push(where(o) + ` (${Math.round(r.height)} px)`);
  }
  // Widgets that did not render.
  for (const s of document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]')) {
    const rendered = s.parentElement.querySelector('.jupyter-widgets, .widget-inline-hbox, .lm-Widget');
    if (!rendered || !visible(rendered)) out.widgets.push(where(s));
  }
  // Content wider than the text column (cut off, or a scrollbar a reader must find).
  for (const el of article.querySelectorAll('.cell_output pre, .cell_input pre, .cell_output table, article table')) {
    if (el.scrollWidth > el.clientWidth + 4 && visible(el))
      out.overflow.push(where(el) + ` ${el.tagName.toLowerCase()} ${el.scrollWidth} px in ${el.clientWidth} px`);
  }
  for (const a of document.querySelectorAll('a[href]')) out.links.push(a.href);
  return out;
};
