// WatermelonDB Model classes for the Fresh Roots tables (schema.js), with camelCase accessors.
//
// No decorators, so no Babel decorators plugin is needed: `fields()` defines the same getters and
// setters `@field` / `@json` would. Only the server writes listings, payments and admin actions;
// the app creates orders (with order_items) and interest_expressions, sets an order's status
// to 'cancelled' and a notification's `read` to true, and the server refuses anything else
// (experimentalRejectedIds). Timestamps are the server's: they are exposed as `createdAtMs` /
// `updatedAtMs` (integer ms), not `createdAt` / `updatedAt`, which WatermelonDB would stamp
// with the phone's clock on every local create or update.
const { Model, Q } = require('@nozbe/watermelondb')

function parseJSON(text, fallback) {
  if (typeof text !== 'string' || text === '') return fallback
  try {
    return JSON.parse(text)
  } catch (error) {
    return fallback
  }
}

// { property: 'column' } or { property: ['column', fallback] } for a JSON column.
function fields(ModelClass, columns) {
  for (const [property, spec] of Object.entries(columns)) {
    const [column, fallback, isJSON] = Array.isArray(spec) ? [spec[0], spec[1], true] : [spec]
    Object.defineProperty(ModelClass.prototype, property, {
      configurable: true,
      enumerable: true,
      get() {
        const raw = this._getRaw(column)
        return isJSON ? parseJSON(raw, fallback) : raw
      },
      set(value) {
        this._setRaw(column, isJSON ? JSON.stringify(value) : value)
      },
    })
  }
}

class Listing extends Model {
  static table = 'listings'
  static associations = { order_items: { type: 'has_many', foreignKey: 'listing_id' } }
}
fields(Listing, {
  title: 'title', description: 'description', price: 'price', unit: 'unit', stock: 'stock',
  category: 'category', images: ['images', []], status: 'status', updatedAtMs: 'updated_at',
})

class Order extends Model {
  static table = 'orders'
  static associations = {
    order_items: { type: 'has_many', foreignKey: 'order_id' },
    payments: { type: 'has_many', foreignKey: 'order_id' },
  }

  get items() {
    return this.collections.get('order_items').query(Q.where('order_id', this.id))
  }
}
fields(Order, {
  userId: 'user_id', status: 'status', paymentMethod: 'payment_method',
  paymentStatus: 'payment_status', total: 'total', note: 'note', rejectReason: 'reject_reason',
  createdAtMs: 'created_at', updatedAtMs: 'updated_at',
})

class OrderItem extends Model {
  static table = 'order_items'
  static associations = {
    orders: { type: 'belongs_to', key: 'order_id' },
    listings: { type: 'belongs_to', key: 'listing_id' },
  }
}
fields(OrderItem, { orderId: 'order_id', listingId: 'listing_id', quantity: 'quantity', price: 'price' })

class InterestExpression extends Model {
  static table = 'interest_expressions'
}
fields(InterestExpression, {
  userId: 'user_id', listingId: 'listing_id', message: 'message', createdAtMs: 'created_at',
})

class Notification extends Model {
  static table = 'notifications'
}
fields(Notification, {
  type: 'type', title: 'title', message: 'message', read: 'read', data: ['data', {}],
  createdAtMs: 'created_at',
})

class Payment extends Model {
  static table = 'payments'
  static associations = { orders: { type: 'belongs_to', key: 'order_id' } }
}
fields(Payment, {
  orderId: 'order_id', method: 'method', status: 'status', amount: 'amount',
  currency: 'currency', transactionId: 'transaction_id', createdAtMs: 'created_at',
  updatedAtMs: 'updated_at',
})

class AdminAction extends Model {
  static table = 'admin_actions'
}
fields(AdminAction, {
  adminId: 'admin_id', action: 'action', targetTable: 'target_table', targetId: 'target_id',
  notes: 'notes', createdAtMs: 'created_at',
})

const modelClasses = [Listing, Order, OrderItem, InterestExpression, Notification, Payment, AdminAction]

module.exports = {
  modelClasses,
  Listing,
  Order,
  OrderItem,
  InterestExpression,
  Notification,
  Payment,
  AdminAction,
}
