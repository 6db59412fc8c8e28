import asyncio, gc, sys, threading
sys.path.insert(0,'.')
from clipperlite import Clipper
from capacity import Greedy, small_input
gate = threading.Event()
def gated(xs):
    gate.wait(10); return [1.0]*len(xs)
async def count(predict, n=2000):
    gc.collect(); gc.disable()
    before = len(gc.get_objects())
    tasks = [asyncio.ensure_future(predict("a", small_input(i))) for i in range(n)]
    await asyncio.sleep(0.05)
    during = len(gc.get_objects())
    gate.set()
    await asyncio.gather(*tasks)
    gc.enable()
    gate.clear()
    return (during - before) / n
async def main():
    async with Clipper() as c:
        c.register_application("a", "doubles", -1.0, 10_000_000)
        await c.deploy_model("m", 1, "doubles", gated, max_queue=100000)
        c.link_model_to_app("a", "m")
        await c.predict("a", small_input(-1)) if gate.set() is None else None
        gate.clear()
        print("clipperlite tracked objects per in-flight query (incl. task+coroutine):", await count(c.predict))
    g = Greedy(gated)
    print("greedy:", await count(g.predict))
    g.close()
asyncio.run(main())
async def floor():
    loop = asyncio.get_running_loop()
    futs = []
    async def bare(app, x):
        f = loop.create_future(); futs.append(f); await f
    async def release():
        for f in futs: f.set_result(1)
    gc.collect(); gc.disable(); before = len(gc.get_objects())
    tasks = [asyncio.ensure_future(bare("a", i)) for i in range(2000)]
    await asyncio.sleep(0.05); during = len(gc.get_objects())
    await release(); await asyncio.gather(*tasks); gc.enable()
    print("floor (a task awaiting a future):", (during - before) / 2000)
asyncio.run(floor())
