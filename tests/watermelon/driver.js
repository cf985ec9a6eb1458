// A phone's local database, for tests: the real WatermelonDB (LokiJS adapter, in memory)
// running synchronize() against the server. Commands arrive as JSON lines on stdin; each
// gets one JSON line on stdout. WatermelonDB's own logging goes to stderr.
console.log = (...args) => console.error(...args)

const readline = require('readline')
const { Database, appSchema, tableSchema, Model, Q } = require('@nozbe/watermelondb')
const LokiJSAdapter = require('@nozbe/watermelondb/adapters/lokijs').default
const { synchronize } = require('@nozbe/watermelondb/sync')

const [baseUrl, token] = process.argv.slice(2)
const s = (name, isOptional = false) => ({ name, type: 'string', isOptional })
const n = (name) => ({ name, type: 'number' })
const b = (name) => ({ name, type: 'boolean' })

const schema = appSchema({
  version: 1,
  tables: [
    tableSchema({ name: 'listings', columns: [s('title'), s('description'), n('price'), s('unit'),
      n('stock'), s('category'), s('images'), s('status'), n('updated_at')] }),
    tableSchema({ name: 'orders', columns: [s('user_id'), s('status'), s('payment_method'),
      s('payment_status'), n('total'), s('note', true), s('reject_reason', true), n('created_at'),
      n('updated_at')] }),
    tableSchema({ name: 'order_items', columns: [s('order_id'), s('listing_id'), n('quantity'),
      n('price')] }),
    tableSchema({ name: 'interest_expressions', columns: [s('user_id'), s('listing_id'),
      s('message', true), n('created_at')] }),
    tableSchema({ name: 'notifications', columns: [s('type'), s('title'), s('message'), b('read'),
      s('data'), n('created_at')] }),
    tableSchema({ name: 'payments', columns: [s('order_id'), s('method'), s('status'), n('amount'),
      s('currency'), s('transaction_id', true), n('created_at'), n('updated_at')] }),
    tableSchema({ name: 'admin_actions', columns: [s('admin_id'), s('action'), s('target_table'),
      s('target_id'), s('notes', true), n('created_at')] }),
  ],
})
const tables = schema.tables ? Object.keys(schema.tables) : []
const modelClasses = tables.map((name) => class extends Model { static table = name })
const adapter = new LokiJSAdapter({
  schema, useWebWorker: false, useIncrementalIndexedDB: false, extraLokiOptions: { autosave: false },
})
const database = new Database({ adapter, modelClasses })
const endpoint = `${baseUrl}/api/sync/watermelon`
const headers = { authorization: `Bearer ${token}`, 'content-type': 'application/json' }

async function sync() {
  await synchronize({
    database,
    pullChanges: async ({ lastPulledAt, schemaVersion, migration }) => {
      const query = `last_pulled_at=${lastPulledAt ?? ''}&schema_version=${schemaVersion}` +
        `&migration=${encodeURIComponent(JSON.stringify(migration))}`
      const response = await fetch(`${endpoint}?${query}`, { headers })
      if (!response.ok) throw new Error(`pull ${response.status}: ${await response.text()}`)
      // The whole body: { changes, timestamp } and, after a reset, experimentalStrategy.
      return await response.json()
    },
    pushChanges: async ({ changes, lastPulledAt }) => {
      const response = await fetch(`${endpoint}?last_pulled_at=${lastPulledAt}`, {
        method: 'POST', headers, body: JSON.stringify(changes),
      })
      if (!response.ok) throw new Error(`push ${response.status}: ${await response.text()}`)
      const body = await response.json()
      return body.experimentalRejectedIds ? { experimentalRejectedIds: body.experimentalRejectedIds } : {}
    },
  })
}

async function dump() {
  const result = {}
  for (const name of tables) {
    const records = await database.get(name).query().fetch()
    result[name] = records.map((record) => {
      const { _status, _changed, ...raw } = record._raw
      return { ...raw, _status }
    })
  }
  return result
}

async function handle(command) {
  switch (command.op) {
    case 'sync':
      await sync()
      return {}
    case 'dump':
      return { tables: await dump() }
    case 'order':
      await database.write(async () => {
        const orders = database.get('orders')
        const items = database.get('order_items')
        const batch = [orders.prepareCreateFromDirtyRaw({ status: 'pending', payment_status: 'unpaid',
          total: 0, created_at: Date.now(), updated_at: Date.now(), ...command.order })]
        for (const item of command.items) {
          batch.push(items.prepareCreateFromDirtyRaw({ price: 0, order_id: command.order.id, ...item }))
        }
        await database.batch(...batch)
      })
      return {}
    case 'update': {
      await database.write(async () => {
        const record = await database.get(command.table).find(command.id)
        await record.update((r) => { for (const [k, v] of Object.entries(command.values)) r._setRaw(k, v) })
      })
      return {}
    }
    case 'create': {
      await database.write(async () => {
        await database.batch(database.get(command.table).prepareCreateFromDirtyRaw(command.raw))
      })
      return {}
    }
    default:
      throw new Error(`unknown op ${command.op}`)
  }
}

const lines = readline.createInterface({ input: process.stdin })
let queue = Promise.resolve()
lines.on('line', (line) => {
  queue = queue.then(async () => {
    try {
      const reply = await handle(JSON.parse(line))
      process.stdout.write(JSON.stringify({ ok: true, ...reply }) + '\n')
    } catch (error) {
      process.stdout.write(JSON.stringify({ ok: false, error: String(error && error.message || error) }) + '\n')
    }
  })
})
lines.on('close', () => { queue.then(() => process.exit(0)) })
