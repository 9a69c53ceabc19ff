from aiohttp import web


def make_app(recorder):
    return web.Application()
