-- The registered workers and their last beats, with the store's "now" to age them by. Returns
-- {now, {id, record (JSON), ...}, {id, last beat, ...}}.
return {fmt(NOW), redis.call('HGETALL', P .. ':workers'),
        redis.call('ZRANGE', P .. ':beats', 0, -1, 'WITHSCORES')}
