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

function barChart (points, label) {
  const width = 600; const height = 160; const max = Math.max(1, ...points.map((p) => p.value))
  const step = width / Math.max(1, points.length)
  const bars = points.map((p, i) => {
    const h = Math.round((p.value / max) * (height - 20))
    return `<rect x="${i * step + 2}" y="${height - h}" width="${Math.max(2, step - 4)}"
      height="${h}" fill="#2f7a3b"><title>${esc(p.day)}: ${esc(p.text)}</title></rect>`
  }).join('')
  return `<figure><figcaption>${esc(label)}</figcaption>
    <svg class="chart" viewBox="0 0 ${width} ${height}" preserveAspectRatio="none">${bars}</svg></figure>`
}

async function renderAnalytics () {
  const data = await api('GET', '/api/admin/analytics')
  const days = data.orders_per_day
  view.innerHTML = `<h1>Analytics <span class="muted">last 30 days</span></h1>
    <div class="cards">
      <div class="card">Orders<b>${days.reduce((n, d) => n + d.orders, 0)}</b></div>
      <div class="card">Revenue<b>${rupees(days.reduce((n, d) => n + d.revenue, 0))}</b></div>
      <div class="card">Approval rate<b>${data.approval_rate === null ? '–'
        : Math.round(data.approval_rate * 100) + ' %'}</b></div>
      <div class="card">Time to approve<b>${data.mean_time_to_approve_seconds === null ? '–'
        : Math.round(data.mean_time_to_approve_seconds / 60) + ' min'}</b></div>
      <div class="card">Active devices<b>${data.active_devices}</b></div>
    </div>
    ${barChart(days.map((d) => ({ day: d.day, value: d.orders, text: `${d.orders} orders` })), 'Orders per day')}
    ${barChart(days.map((d) => ({ day: d.day, value: d.revenue, text: rupees(d.revenue) })), 'Revenue per day')}
    <h2>Top listings</h2><table><tr><th>Listing</th><th>Quantity</th><th>Revenue</th></tr>
    ${data.top_listings.map((t) => `<tr><td>${esc(t.title)}</td><td>${t.quantity}</td>
      <td>${rupees(t.revenue)}</td></tr>`).join('')}</table>
    <h2>Interest → purchase</h2><table><tr><th>Listing</th><th>Interested</th><th>Bought</th>
    <th>Rate</th></tr>${data.interest_conversion.map((c) => `<tr><td>${esc(c.title)}</td>
      <td>${c.interested}</td><td>${c.purchased}</td><td>${Math.round(c.rate * 100)} %</td></tr>`).join('')}</table>
    <h2>Searches with no results</h2><ul>${data.searches_without_results.map((s) =>
      `<li>${esc(s.query)} (${s.searches})</li>`).join('')}</ul>`
}

// ---- routing -------------------------------------------------------------------------------

async function route () {
  if (!state.token) return
  const page = location.hash.split('?')[0]
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

// A reload keeps the session: the HttpOnly cookie gets a fresh access token.
session('/admin/session/refresh').then((data) => data ? start() : showLogin())
