// Fresh Roots admin dashboard: plain ES modules, no build step, no CDN.
// The access token lives in memory only; the refresh token is an HttpOnly cookie that this
// script never sees. Pending orders arrive live over the sync WebSocket.

const state = { token: null, user: null, socket: null, pending: [], seen: new Set() }
const view = document.getElementById('view')
const rupees = (cents) => `Rs ${(cents / 100).toLocaleString('en-MU', { minimumFractionDigits: 2 })}`
const when = (ms) => new Date(ms).toLocaleString('en-GB', { timeZone: 'Indian/Mauritius' })
const esc = (text) => String(text ?? '').replace(/[&<>"']/g,
  (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]))

function toast (message) {
  const box = document.getElementById('toast')
  box.textContent = message
  box.classList.add('show')
  setTimeout(() => box.classList.remove('show'), 3000)
}

function csrf () {
  const match = document.cookie.match(/(?:^|; )fr_admin_csrf=([^;]+)/)
  return match ? decodeURIComponent(match[1]) : ''
}

async function session (path, body) {
  const response = await fetch(path, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-csrf-token': csrf() },
    body: body ? JSON.stringify(body) : undefined,
    credentials: 'same-origin'
  })
  if (!response.ok) return null
  if (response.status === 204) return {}
  const data = await response.json()
  state.token = data.access_token
  state.user = data.user
  return data
}

async function api (method, path, body) {
  for (let attempt = 0; attempt < 2; attempt++) {
    const response = await fetch(path, {
      method,
      headers: { authorization: `Bearer ${state.token}`, 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body)
    })
    if (response.status === 401 && attempt === 0 && await session('/admin/session/refresh')) continue
    if (response.status === 401) { showLogin(); throw new Error('signed out') }
    if (response.status === 204) return {}
    const data = await response.json()
    if (!response.ok) throw new Error(data.error ? data.error.message : response.statusText)
    return data
  }
}

// ---- sign in ---------------------------------------------------------------------------

function showLogin (message = '') {
  document.getElementById('nav').hidden = true
  if (state.socket) state.socket.close()
  view.innerHTML = `
    <h1>Sign in</h1>
    <form id="login" class="inline">
      <input name="email" type="email" placeholder="email" required autocomplete="username">
      <input name="password" type="password" placeholder="password" required
             autocomplete="current-password">
      <button class="primary">Sign in</button>
    </form><p class="muted">${esc(message)}</p>`
  document.getElementById('login').onsubmit = async (event) => {
    event.preventDefault()
    const form = new FormData(event.target)
    const response = await fetch('/admin/session', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ email: form.get('email'), password: form.get('password') })
    })
    const data = await response.json()
    if (!response.ok) return showLogin(data.error ? data.error.message : 'Sign-in failed')
    state.token = data.access_token
    state.user = data.user
    start()
  }
}

// ---- live updates ------------------------------------------------------------------------

async function connectLive () {
  let cursor = sessionStorage.getItem('fr-admin-cursor')
  if (!cursor) {
    // Start at the log's head: the feed only signals changes, the queue comes over REST,
    // so a first hello without a cursor would stream every order ever placed for nothing.
    try {
      cursor = (await api('GET', '/api/admin/live/cursor')).cursor
    } catch {
      cursor = null // the full catch-up still works, only slower
    }
  }
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws'
  const socket = new WebSocket(`${scheme}://${location.host}/api/sync/ws`)
  state.socket = socket
  socket.onopen = () => socket.send(JSON.stringify({ type: 'hello', token: state.token, cursor }))
  socket.onmessage = async (event) => {
    const frame = JSON.parse(event.data)
    if (frame.type === 'ping') return socket.send('{"type":"pong"}')
    if (frame.type !== 'changes') return
    cursor = frame.cursor
    sessionStorage.setItem('fr-admin-cursor', cursor)
    document.getElementById('live').className = 'live on'
    if (frame.changes.orders || frame.reset) {
      await loadPending()
      if (location.hash === '#/queue' || location.hash === '') renderQueue()
    }
  }
  socket.onclose = (event) => {
    document.getElementById('live').className = 'live off'
    if (state.socket !== socket || !state.token) return
    const delay = 1000 + Math.random() * 4000 // jitter: not every tab reconnects at once
    if (event.code === 4401) session('/admin/session/refresh').then(() => setTimeout(connectLive, delay))
    else setTimeout(connectLive, delay)
  }
}

// ---- pending orders ----------------------------------------------------------------------

async function loadPending () {
  const data = await api('GET', '/api/admin/orders?status=pending&limit=200')
  state.pending = data.items
  document.getElementById('pending-count').textContent = state.pending.length
}

function renderQueue () {
  const rows = state.pending.map((order) => {
    const fresh = !state.seen.has(order.id)
    state.seen.add(order.id)
    return `<tr data-order="${esc(order.id)}" class="${fresh ? 'new' : ''}">
      <td>${esc(order.id)}</td><td>${esc(order.user_id)}</td><td>${rupees(order.total)}</td>
      <td>${esc(order.payment_method)}</td><td>${when(order.created_at)}</td>
      <td>${esc(order.note || '')}</td>
      <td><form class="inline decide">
        <input name="text" placeholder="notes / reason">
        <button class="primary" name="approve" value="1">Approve</button>
        <button class="danger" name="reject" value="1">Reject</button></form></td></tr>`
  }).join('')
  view.innerHTML = `<h1>Pending orders</h1>
    <table id="queue"><thead><tr><th>Order</th><th>Buyer</th><th>Total</th><th>Payment</th>
    <th>Placed</th><th>Note</th><th>Decision</th></tr></thead><tbody>${rows ||
    '<tr><td colspan="7" class="muted">No purchase request is waiting.</td></tr>'}</tbody></table>`
  for (const form of view.querySelectorAll('form.decide')) {
    form.onsubmit = async (event) => {
      event.preventDefault()
      const id = form.closest('tr').dataset.order
      const text = new FormData(form).get('text')
      const rejecting = event.submitter && event.submitter.name === 'reject'
      try {
        if (rejecting) {
          if (!text) return toast('Give a reason to reject.')
          await api('PUT', `/api/admin/orders/${encodeURIComponent(id)}/reject`, { reason: text })
        } else {
          await api('PUT', `/api/admin/orders/${encodeURIComponent(id)}/approve`, { notes: text || null })
        }
        toast(rejecting ? 'Rejected' : 'Approved')
        await loadPending()
        renderQueue()
      } catch (error) { toast(error.message) }
    }
  }
}

// ---- listings ----------------------------------------------------------------------------

async function renderListings () {
  const data = await api('GET', '/api/listings?limit=100')
  const rows = data.items.map((listing) => `<tr data-listing="${esc(listing.id)}">
      <td><input name="title" value="${esc(listing.title)}"></td>
      <td><input name="price" type="number" step="0.01" min="0" value="${listing.price / 100}"></td>
      <td><input name="stock" type="number" min="0" value="${listing.stock}"></td>
      <td>${esc(listing.unit)}</td>
      <td><select name="status">${['draft', 'published', 'archived'].map((s) =>
        `<option ${s === listing.status ? 'selected' : ''}>${s}</option>`).join('')}</select></td>
      <td>${listing.images.length} image(s) <input name="image" type="file" accept="image/*"></td>
      <td><button class="primary" data-save>Save</button></td></tr>`).join('')
  view.innerHTML = `<h1>Listings</h1>
    <form id="create" class="inline">
      <input name="title" placeholder="title" required>
      <input name="price" type="number" step="0.01" min="0" placeholder="price (Rs)" required>
      <select name="unit">${['kg', 'g', 'piece', 'bunch', 'dozen', 'pack', 'litre', 'bag', 'tray', 'lb']
        .map((u) => `<option>${u}</option>`).join('')}</select>
      <input name="stock" type="number" min="0" placeholder="stock" required>
      <input name="category" placeholder="category" value="vegetables">
      <button class="primary">Add draft</button></form>
    <table id="listings"><thead><tr><th>Title</th><th>Price (Rs)</th><th>Stock</th><th>Unit</th>
    <th>Status</th><th>Images</th><th></th></tr></thead><tbody>${rows}</tbody></table>`
  document.getElementById('create').onsubmit = async (event) => {
    event.preventDefault()
    const form = new FormData(event.target)
    try {
      await api('POST', '/api/admin/listings', {
        title: form.get('title'), price: Math.round(Number(form.get('price')) * 100),
        unit: form.get('unit'), stock: Number(form.get('stock')),
        category: form.get('category') || 'other', status: 'draft'
      })
      toast('Listing created as a draft')
      renderListings()
    } catch (error) { toast(error.message) }
  }
  for (const button of view.querySelectorAll('[data-save]')) {
    button.onclick = async () => {
      const row = button.closest('tr')
      const field = (name) => row.querySelector(`[name=${name}]`)
      try {
        const patch = {
          title: field('title').value, price: Math.round(Number(field('price').value) * 100),
          stock: Number(field('stock').value), status: field('status').value
        }
        const file = field('image').files[0]
        if (file) patch.images = [...await currentImages(row.dataset.listing), await upload(file)]
        await api('PATCH', `/api/admin/listings/${encodeURIComponent(row.dataset.listing)}`, patch)
        toast('Saved')
      } catch (error) { toast(error.message) }
    }
  }
}

async function currentImages (id) {
  return (await api('GET', `/api/listings/${encodeURIComponent(id)}`)).images
}

async function upload (file) {
  // Signed direct upload: the image goes from the browser to Cloudinary, not through us.
  const signed = await api('POST', '/api/admin/media/sign', { folder: 'listings' })
  const form = new FormData()
  for (const [key, value] of Object.entries(signed.params)) form.append(key, value)
  form.append('file', file)
  const response = await fetch(signed.upload_url, { method: 'POST', body: form })
  const data = await response.json()
  if (!response.ok) throw new Error(data.error ? data.error.message : 'upload failed')
  return data.public_id
}

// ---- audit log -----------------------------------------------------------------------------

async function renderAudit (cursor = null, rows = '') {
  const action = new URLSearchParams(location.hash.split('?')[1] || '').get('action') || ''
  const query = new URLSearchParams({ limit: '50' })
  if (action) query.set('action', action)
  if (cursor) query.set('cursor', cursor)
  const data = await api('GET', `/api/admin/audit?${query}`)
  rows += data.items.map((item) => `<tr><td>${when(item.created_at)}</td><td>${esc(item.admin_id)}</td>
    <td>${esc(item.action)}</td><td>${esc(item.target_table)} ${esc(item.target_id)}</td>
    <td>${esc(item.notes || '')}</td></tr>`).join('')
  view.innerHTML = `<h1>Audit log</h1>
    <form id="filter" class="inline"><select name="action"><option value="">all actions</option>
    ${['approve_order', 'reject_order', 'mark_paid', 'complete', 'cancel_order', 'create_listing',
       'update_listing', 'delete_listing'].map((a) =>
       `<option ${a === action ? 'selected' : ''}>${a}</option>`).join('')}</select>
    <button>Filter</button></form>
    <table id="audit"><thead><tr><th>When</th><th>Admin</th><th>Action</th><th>Target</th>
    <th>Notes</th></tr></thead><tbody>${rows}</tbody></table>
    ${data.next_cursor ? '<button id="more">More</button>' : ''}`
  document.getElementById('filter').onsubmit = (event) => {
    event.preventDefault()
    location.hash = `#/audit?action=${new FormData(event.target).get('action')}`
  }
  const more = document.getElementById('more')
  if (more) more.onclick = () => renderAudit(data.next_cursor, rows)
}

// ---- analytics -----------------------------------------------------------------------------
// Charts are uPlot (vendor/uplot/, a classic script that defines the global `uPlot`). Days are
// Mauritius days ("YYYY-MM-DD" from the server); on the charts a day is its UTC midnight, in
// seconds, formatted in UTC, so no browser time zone can shift a bar onto the wrong date.

const DAY = 86400
const MU_OFFSET_MS = 4 * 3600 * 1000 // Mauritius: UTC+4, no daylight saving
const charts = []
const dayShort = new Intl.DateTimeFormat('en-GB', { day: 'numeric', month: 'short', timeZone: 'UTC' })
const dayLong = new Intl.DateTimeFormat('en-GB',
  { weekday: 'short', day: 'numeric', month: 'short', year: 'numeric', timeZone: 'UTC' })
const dayYear = new Intl.DateTimeFormat('en-GB',
  { day: 'numeric', month: 'short', year: 'numeric', timeZone: 'UTC' })
const wholeRupees = (rupees) => `Rs ${rupees.toLocaleString('en-MU', { maximumFractionDigits: 0 })}`
const plural = (n, word) => `${n.toLocaleString('en-MU')} ${word}${n === 1 ? '' : 's'}`
const dayStart = (day) => Date.UTC(+day.slice(0, 4), +day.slice(5, 7) - 1, +day.slice(8, 10)) / 1000
const isoDay = (seconds) => new Date(seconds * 1000).toISOString().slice(0, 10)
const todayInMauritius = () => new Date(Date.now() + MU_OFFSET_MS).toISOString().slice(0, 10)
// Axis steps: days, weeks, months (ticks on whole days, Mondays, first of the month).
const DAY_STEPS = [1, 2, 7, 14, 30, 91, 182, 365].map((n) => n * DAY)
const COUNT_STEPS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000]
const RUPEE_STEPS = COUNT_STEPS.concat([1e5, 2e5, 5e5, 1e6, 2e6, 5e6, 1e7, 2e7, 5e7, 1e8])
const AXIS_FONT = '12px system-ui, sans-serif'

function destroyCharts () {
  while (charts.length) charts.pop().destroy()
}

function daySplits (u, axis, min, max, step) {
  const ticks = []
  let t = Math.ceil(min / DAY) * DAY
  if (step >= 30 * DAY) {
    const months = Math.round(step / (30 * DAY))
    const first = new Date(t * 1000)
    const month = first.getUTCMonth() + (first.getUTCDate() > 1 ? 1 : 0)
    for (let m = month; ; m += months) {
      const tick = Date.UTC(first.getUTCFullYear(), m, 1) / 1000
      if (tick > max) break
      ticks.push(tick)
    }
    return ticks
  }
  if (step >= 7 * DAY) while (new Date(t * 1000).getUTCDay() !== 1) t += DAY
  for (; t <= max; t += step) ticks.push(t)
  return ticks
}

function dayLabels (u, ticks) {
  // Over several years: the year on the first label and wherever it changes.
  const year = (t) => new Date(t * 1000).getUTCFullYear()
  const years = ticks.length > 0 && year(ticks[0]) !== year(ticks[ticks.length - 1])
  return ticks.map((t, i) => years && (i === 0 || year(t) !== year(ticks[i - 1]))
    ? dayYear.format(t * 1000) : dayShort.format(t * 1000))
}

function niceTop (max, steps) {
  // The y axis ends on a round value above the tallest bar, at most five steps up.
  const step = steps.find((s) => max / s <= 5) || steps[steps.length - 1]
  return (Math.floor(max / step) + 1) * step
}

function tooltip (describe) {
  let tip
  return {
    hooks: {
      init (u) {
        tip = document.createElement('div')
        tip.className = 'chart-tip'
        tip.hidden = true
        u.over.appendChild(tip)
      },
      setSize () { tip.hidden = true }, // the bars moved: the next hover places it again
      setCursor (u) {
        const i = u.cursor.idx
        if (i == null || u.cursor.left < 0) { tip.hidden = true; return }
        const title = document.createElement('b')
        title.textContent = dayLong.format(u.data[0][i] * 1000)
        tip.replaceChildren(title, document.createElement('br'), describe(u.data[1][i]))
        tip.hidden = false
        const x = u.valToPos(u.data[0][i], 'x')
        const y = u.valToPos(u.data[1][i], 'y')
        const width = tip.offsetWidth
        // Beside the bar, not over it: half a bar (70 % of a day, at most 48 px) and a gap.
        const gap = Math.min(24, 0.35 * u.over.clientWidth / u.data[0].length) + 8
        const left = x + gap + width > u.over.clientWidth ? x - gap - width : x + gap
        tip.style.left = `${Math.max(0, left)}px`
        const top = Math.min(y - tip.offsetHeight / 2, u.over.clientHeight - tip.offsetHeight)
        tip.style.top = `${Math.max(0, top)}px`
      }
    }
  }
}

function labelWidth (labels) {
  // The y axis is as wide as its widest label (the top one), so "Rs 12,500" is never cut.
  const context = document.createElement('canvas').getContext('2d')
  context.font = AXIS_FONT
  return Math.ceil(Math.max(...labels.map((label) => context.measureText(label).width)))
}

function dayChart (box, days, { range, name, color, value, steps, tick, describe, yAxisWidth }) {
  const xs = days.map((d) => dayStart(d.day))
  const ys = days.map(value)
  // The days asked for, even where the server left out empty ones (ranges over a year).
  const first = dayStart(range.from); const last = dayStart(range.to)
  const font = AXIS_FONT
  // The axes are drawn on the canvas; their labels are also kept on the box (data-x-labels,
  // data-y-labels) so what the chart shows can be read without reading pixels.
  const shown = (key, format) => (u, ticks) => {
    const labels = format(u, ticks)
    box.dataset[key] = labels.join('|')
    return labels
  }
  const options = {
    width: box.clientWidth,
    height: 240,
    legend: { show: false },
    // Synced: hovering a day on one chart shows that day on the other too.
    cursor: { y: false, points: { show: false }, drag: { x: false, y: false, setScale: false },
      sync: { key: 'analytics-days' } },
    scales: {
      // Half a day either side: every bar sits whole over its date, and one day of data
      // is one bar in the middle, not the full width.
      x: { time: false, range: () => [first - DAY / 2, last + DAY / 2] },
      y: { range: (u, min, max) => [0, niceTop(Math.max(max, 0), steps)] }
    },
    axes: [
      { font, space: 56, incrs: DAY_STEPS, splits: daySplits, values: shown('xLabels', dayLabels),
        grid: { show: false }, stroke: '#333', ticks: { stroke: '#ccc' } },
      { font, space: 36, incrs: steps, values: shown('yLabels', (u, ticks) => ticks.map(tick)),
        size: yAxisWidth + 14, stroke: '#333', grid: { stroke: '#ebebeb' }, ticks: { show: false } }
    ],
    series: [
      {},
      { label: name, fill: color, stroke: color, width: 0, points: { show: false },
        paths: uPlot.paths.bars({ size: [0.7, 48] }) }
    ],
    plugins: [tooltip(describe)]
  }
  const chart = new uPlot(options, [xs, ys], box)
  charts.push(chart)
  return chart
}

function analyticsRange () {
  const params = new URLSearchParams(location.hash.split('?')[1] || '')
  const valid = (day) => /^\d{4}-\d{2}-\d{2}$/.test(day || '') && !Number.isNaN(dayStart(day))
  const to = valid(params.get('to')) ? params.get('to') : todayInMauritius()
  const from = valid(params.get('from')) ? params.get('from') : isoDay(dayStart(to) - 29 * DAY)
  return { from, to, preset: !params.get('from') && !params.get('to') }
}

function emptyBox (message, detail = '') {
  return `<div class="empty" role="status"><b>${esc(message)}</b>
    ${detail ? `<span class="muted">${esc(detail)}</span>` : ''}</div>`
}

async function renderAnalytics () {
  const range = analyticsRange()
  const since = dayStart(range.from) * 1000 - MU_OFFSET_MS // the start of Mauritius days
  const until = (dayStart(range.to) + DAY) * 1000 - MU_OFFSET_MS
  if (since >= until) return toast('The first day must not be after the last.')
  const data = await api('GET', `/api/admin/analytics?from=${since}&to=${until}`)
  const days = data.orders_per_day
  const orders = days.reduce((n, d) => n + d.orders, 0)
  const revenue = days.reduce((n, d) => n + d.revenue, 0)
  const period = dayYear.formatRange(dayStart(range.from) * 1000, dayStart(range.to) * 1000)
  const none = (columns) => `<tr><td colspan="${columns}" class="muted">None in this period.</td></tr>`
  destroyCharts()
  view.innerHTML = `<h1>Analytics <span class="muted">${range.preset ? 'last 30 days, ' : ''}${esc(period)}</span></h1>
    <form id="range" class="inline">
      <label>From <input name="from" type="date" required value="${esc(range.from)}"></label>
      <label>to <input name="to" type="date" required value="${esc(range.to)}"></label>
      <button>Show</button> <a href="#/analytics">Last 30 days</a>
    </form>
    <div class="cards">
      <div class="card">Orders<b>${orders.toLocaleString('en-MU')}</b></div>
      <div class="card">Revenue<b>${rupees(revenue)}</b></div>
      <div class="card">Approval rate<b>${data.approval_rate === null ? '–'
        : Math.round(data.approval_rate * 100) + ' %'}</b></div>
      <div class="card">Time to approve<b>${data.mean_time_to_approve_seconds === null ? '–'
        : Math.round(data.mean_time_to_approve_seconds / 60) + ' min'}</b></div>
      <div class="card">Active devices<b>${data.active_devices}</b></div>
    </div>
    ${orders === 0 ? emptyBox('No orders in this period.', period) : `
    <figure class="chart" id="orders-chart"><figcaption>Orders per day
      <span class="muted">all orders placed, whatever became of them</span></figcaption>
      <div class="plot"></div></figure>
    <figure class="chart" id="revenue-chart"><figcaption>Revenue per day (Rs)
      <span class="muted">approved, paid and completed orders</span></figcaption>
      ${revenue === 0 ? emptyBox('No revenue in this period.',
        `Its ${plural(orders, 'order')} ${orders === 1 ? 'is' : 'are'} pending, rejected or cancelled.`)
        : '<div class="plot"></div>'}</figure>
    <details><summary>Orders and revenue as a table</summary>
      <table id="per-day"><thead><tr><th>Day</th><th>Orders</th><th>Revenue</th></tr></thead><tbody>
      ${days.map((d) => `<tr><td>${esc(dayLong.format(dayStart(d.day) * 1000))}</td><td>${d.orders}</td>
        <td>${rupees(d.revenue)}</td></tr>`).join('')}</tbody></table></details>`}
    <h2>Top listings</h2><table><tr><th>Listing</th><th>Quantity</th><th>Revenue</th></tr>
    ${data.top_listings.map((t) => `<tr><td>${esc(t.title)}</td><td>${t.quantity}</td>
      <td>${rupees(t.revenue)}</td></tr>`).join('') || none(3)}</table>
    <h2>Interest → purchase</h2><table><tr><th>Listing</th><th>Interested</th><th>Bought</th>
    <th>Rate</th></tr>${data.interest_conversion.map((c) => `<tr><td>${esc(c.title)}</td>
      <td>${c.interested}</td><td>${c.purchased}</td><td>${Math.round(c.rate * 100)} %</td></tr>`).join('') ||
      none(4)}</table>
    <h2>Searches with no results</h2>${data.searches_without_results.length
      ? `<ul>${data.searches_without_results.map((s) => `<li>${esc(s.query)} (${s.searches})</li>`).join('')}</ul>`
      : '<p class="muted">None in this period.</p>'}`
  document.getElementById('range').onsubmit = (event) => {
    event.preventDefault()
    const form = new FormData(event.target)
    if (form.get('from') > form.get('to')) return toast('The first day must not be after the last.')
    location.hash = `#/analytics?from=${form.get('from')}&to=${form.get('to')}`
  }
  if (orders === 0) return
  const countTop = niceTop(Math.max(...days.map((d) => d.orders)), COUNT_STEPS)
  const rupeeTop = niceTop(Math.max(...days.map((d) => d.revenue / 100)), RUPEE_STEPS)
  // One y axis width for both charts (the widest top label), so their days line up.
  const yAxisWidth = labelWidth([countTop.toLocaleString('en-MU'), wholeRupees(rupeeTop)])
  dayChart(view.querySelector('#orders-chart .plot'), days, {
    range,
    yAxisWidth,
    name: 'Orders',
    color: '#2f7a3b',
    value: (d) => d.orders,
    steps: COUNT_STEPS,
    tick: (n) => n.toLocaleString('en-MU'),
    describe: (n) => plural(n, 'order')
  })
  const revenueBox = view.querySelector('#revenue-chart .plot')
  if (revenueBox) {
    dayChart(revenueBox, days, {
      range,
      yAxisWidth,
      name: 'Revenue',
      color: '#8a5a12',
      value: (d) => d.revenue / 100,
      steps: RUPEE_STEPS,
      tick: wholeRupees,
      describe: (r) => rupees(Math.round(r * 100))
    })
  }
}

window.addEventListener('resize', () => {
  for (const chart of charts) {
    if (!chart.root.isConnected) continue // signed out: gone until the next page
    const width = chart.root.parentNode.clientWidth
    if (width !== chart.width) chart.setSize({ width, height: chart.height })
  }
})

// ---- routing -------------------------------------------------------------------------------

async function route () {
  if (!state.token) return
  const page = location.hash.split('?')[0]
  destroyCharts()
  try {
    if (page === '#/listings') await renderListings()
    else if (page === '#/audit') await renderAudit()
    else if (page === '#/analytics') await renderAnalytics()
    else { await loadPending(); renderQueue() }
  } catch (error) { toast(error.message) }
}

function start () {
  document.getElementById('nav').hidden = false
  connectLive()
  route()
}

document.getElementById('sign-out').onclick = async () => {
  await fetch('/admin/session/logout', { method: 'POST', headers: { 'x-csrf-token': csrf() } })
  state.token = null
  showLogin('Signed out.')
}
window.addEventListener('hashchange', route)

// A reload keeps the session: the HttpOnly cookie gets a fresh access token. Without the
// CSRF cookie that comes with it there is no session to refresh (and no 403 to ask for).
if (csrf()) session('/admin/session/refresh').then((data) => data ? start() : showLogin())
else showLogin()
