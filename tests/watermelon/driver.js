// A phone's local database, for tests: the real WatermelonDB (LokiJS adapter, in memory)
// running synchronize() against the server. Commands arrive as JSON lines on stdin; each
// gets one JSON line on stdout. WatermelonDB's own logging goes to stderr.
console.log = (...args) => console.error(...args)

const path = require('path')
const readline = require('readline')

// The schema and models are the app's own files (clients/react-native/), which import
// '@nozbe/watermelondb' as the app does. Here it is installed beside this driver, so Node is
// told to look for packages there too, before anything loads them.
process.env.NODE_PATH = [path.join(__dirname, 'node_modules'), process.env.NODE_PATH]
  .filter(Boolean).join(path.delimiter)
require('module').Module._initPaths()

const { Database } = require('@nozbe/watermelondb')
const LokiJSAdapter = require('@nozbe/watermelondb/adapters/lokijs').default
const { synchronize } = require('@nozbe/watermelondb/sync')
const { schema } = require('../../clients/react-native/schema')
const { modelClasses } = require('../../clients/react-native/models')

const [baseUrl, token] = process.argv.slice(2)
const tables = Object.keys(schema.tables)
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
