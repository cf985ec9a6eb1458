// The Fresh Roots synced tables as a WatermelonDB schema: import this in the app.
//
// Column names and types are exactly what the server sends (storage/synced.py): snake_case,
// ids are strings, money is integer cents of MUR, times are integer milliseconds since the
// Unix epoch (UTC). Arrays and objects travel as JSON strings in WatermelonDB columns: listing
// `images` (Cloudinary public ids) and notification `data` (e.g. {"order_id", "notification_id"}).
// Every table also has WatermelonDB's own `id`, which is the server's id.
//
// CommonJS on purpose: Metro bundles it as any module (`import { schema } from './schema'`),
// and the server's tests load this very file in Node (tests/watermelon/driver.js).
const { appSchema, tableSchema } = require('@nozbe/watermelondb')

const string = (name, options = {}) => ({ name, type: 'string', ...options })
const number = (name, options = {}) => ({ name, type: 'number', ...options })
const boolean = (name) => ({ name, type: 'boolean' })
const optional = { isOptional: true }
const indexed = { isIndexed: true }

// Bump when a column or table changes, with a WatermelonDB migration. The server ignores
// `schema_version` and `migration`: a column added later reaches existing rows only as they
// change on the server (a fresh database gets every column at its first sync).
const SCHEMA_VERSION = 1

const schema = appSchema({
  version: SCHEMA_VERSION,
  tables: [
    // Published listings for a user; every listing, drafts too, for an admin.
    tableSchema({
      name: 'listings',
      columns: [
        string('title'),
        string('description'),
        number('price'), // cents per unit
        string('unit'), // 'kg', 'bunch', …
        number('stock'), // in units
        string('category', indexed),
        string('images'), // JSON string: ["freshroots/…", …]
        string('status'), // 'published' (users never see anything else) | 'draft' | 'archived'
        number('updated_at'),
      ],
    }),
    // The user's own orders. status: pending | approved | paid | completed | rejected | cancelled
    tableSchema({
      name: 'orders',
      columns: [
        string('user_id'),
        string('status'),
        string('payment_method'), // juice | myt_money | card | cod
        string('payment_status'), // unpaid | paid
        number('total'), // cents, computed by the server
        string('note', optional),
        string('reject_reason', optional), // e.g. 'out_of_stock'
        number('created_at'),
        number('updated_at'),
      ],
    }),
    tableSchema({
      name: 'order_items',
      columns: [
        string('order_id', indexed),
        string('listing_id', indexed),
        number('quantity'),
        number('price'), // cents per unit at purchase time, set by the server
      ],
    }),
    tableSchema({
      name: 'interest_expressions',
      columns: [
        string('user_id'),
        string('listing_id', indexed),
        string('message', optional),
        number('created_at'),
      ],
    }),
    tableSchema({
      name: 'notifications',
      columns: [
        string('type'), // order_pending, order_approved, order_rejected, order_paid, …
        string('title'),
        string('message'),
        boolean('read'),
        string('data'), // JSON string: {"order_id": "…", "notification_id": "…"}
        number('created_at'),
      ],
    }),
    // Payments of the user's own orders. status: pending | paid | failed | flagged
    tableSchema({
      name: 'payments',
      columns: [
        string('order_id', indexed),
        string('method'),
        string('status'),
        number('amount'), // cents
        string('currency'), // 'MUR'
        string('transaction_id', optional),
        number('created_at'),
        number('updated_at'),
      ],
    }),
    // Admins only (the dashboard's audit log); always empty for a buyer.
    tableSchema({
      name: 'admin_actions',
      columns: [
        string('admin_id'),
        string('action'),
        string('target_table'),
        string('target_id'),
        string('notes', optional),
        number('created_at'),
      ],
    }),
  ],
})

// Columns holding JSON text in WatermelonDB (and arrays/objects on /api/sync/pull).
const JSON_COLUMNS = { listings: ['images'], notifications: ['data'] }

module.exports = { schema, SCHEMA_VERSION, JSON_COLUMNS }
